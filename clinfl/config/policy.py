"""Site privacy policies: a frozen, validated schema read from TOML (never evaluated as code).

A hospital's privacy officer writes the site's terms in a policy file (``policies/*.toml``). The
site agent enforces them itself. :func:`load_policy` checks every field at once, the way all
configuration is checked (:mod:`clinfl.config.checks`), and raises one
:class:`~clinfl.errors.ValidationError` that names each bad field with its value, bound and fix.
The ``[secagg]`` table is the secure-aggregation protocol's own type,
:class:`~clinfl.secagg.settings.SecAggRequirements` (what a site's policy allows).
:func:`apply_request` merges what the coordinator asks for. A request may only tighten the
policy; anything looser is refused with :class:`~clinfl.errors.PolicyViolation`.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clinfl.config.checks import Problems, as_declared, read_tables
from clinfl.errors import ConfigError, PolicyViolation
from clinfl.secagg.settings import SecAggRequirements

ACCOUNTANTS = ("rdp", "prv")
MODALITIES = ("CR", "DX", "CT", "MR", "US", "MG", "XA", "RF", "NM", "PT", "OT")
VIEWS = ("PA", "AP", "LL", "RL", "LATERAL", "OBLIQUE")
METRICS = ("loss", "auc", "counts", "epsilon", "ingest")
METRIC_DISCLOSURE: dict[str, str] = {
    "loss": "the mean training loss rides in the masked sum, outside the DP accountant; a "
    "coordinator that crafts the global model and varies the survivor set across rounds can "
    "compute this site's per-class positive counts from it",
    "auc": "this site joins the federated evaluation: it scores each round's global model on "
    "its validation and test studies and adds per-class score histograms to a masked sum, so no "
    "per-site metric leaves in the clear; a coordinator that crafts models and differences sums "
    "over survivor sets that differ by this site can still compute its histograms (those sets' "
    "sizes and per-class positive counts), unless the policy adds evaluation noise",
    "counts": "the sample count weights the masked update and is in the site's shared audit "
    "summary; a coordinator that varies the survivor set across rounds (one dropout is enough) "
    "computes it exactly",
    "epsilon": "the cumulative epsilon leaves in the clear; it depends on the sampling rate, so "
    "it gives the batches per epoch (the sample count to within one batch)",
    "ingest": "the ingestion summary (files accepted, quarantined by reason) is in the site's "
    "shared audit summary",
}
"""What a lying coordinator can compute about this site from each reported metric (SECAGG.md,
R7; docs/threat-model.md). None of it is covered by the DP accountant's epsilon."""

NO_DP_WARNING = (
    "this policy lets the site train without DP-SGD (dp.required = false): a coordinator that "
    "runs two rounds on nearly the same global model, with survivor sets that differ only by "
    "this site, and subtracts the two sums gets a close approximation of this site's update "
    "(not an exact one: every local training call draws fresh randomness), and nothing bounds "
    "what that update reveals about the site's data; set dp.required = true for patient data"
)
"""Why a policy without DP-SGD is a risk even under secure aggregation (SECAGG.md "Version 3",
R10; docs/threat-model.md, "Limits")."""


@dataclass(frozen=True)
class DPPolicy:
    """DP-SGD terms: one of ``noise_multiplier``, ``target_epsilon_per_round``, ``planned_rounds``.

    ``planned_rounds``: the site derives its own noise multiplier so that this many rounds of its
    own training (its sampling rate and steps per round) spend exactly what is left of
    ``epsilon_budget`` (docs/privacy.md, "Planning a budget").
    """

    required: bool = True
    epsilon_budget: float = 8.0
    delta: float = 1e-5
    noise_multiplier: float | None = 1.0
    target_epsilon_per_round: float | None = None
    planned_rounds: int | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    secure_rng: bool = True


# The [secagg] table: the protocol's SecAggRequirements itself (one type, not a copy of it).
SecAggPolicy = SecAggRequirements


@dataclass(frozen=True)
class DataPolicy:
    """What the ingester may accept and the fewest local samples to train on."""

    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST",)
    views: tuple[str, ...] = ("PA", "AP")
    min_samples: int = 1


@dataclass(frozen=True)
class TrainingBounds:
    """The round settings a coordinator may ask of the site (SECAGG.md, rule R7).

    A round whose learning rate, local epochs (or, in fixed-step mode, local steps) or batch
    size lies outside these bounds is refused before any training step
    (:func:`clinfl.training_bounds.check_round_settings`). A batch minimum above 1 keeps one
    sample from being a whole step's gradient.
    """

    min_lr: float = 1e-6
    max_lr: float = 0.1
    max_local_epochs: int = 20
    min_batch_size: int = 8
    max_batch_size: int = 1024
    max_local_steps: int = 10000


@dataclass(frozen=True)
class ReportingPolicy:
    """Which metrics may leave the site: none unless the policy lists them.

    Each metric lets a lying coordinator compute this site's own figures, outside the DP
    accountant (:data:`METRIC_DISCLOSURE`), so a policy consents to none by default.
    """

    metrics: tuple[str, ...] = ()
    evaluation_epsilon: float | None = None
    """Discrete Laplace noise on the site's evaluation histograms, at this pure-DP epsilon per
    evaluation (recorded in the ledger as its own line); None: no noise (the measured default,
    docs/privacy.md "Evaluation noise")."""


@dataclass(frozen=True)
class SitePolicy:
    """A site's whole policy, with the SHA-256 of the file it came from."""

    dp: DPPolicy = field(default_factory=DPPolicy)
    secagg: SecAggRequirements = field(default_factory=SecAggRequirements)
    data: DataPolicy = field(default_factory=DataPolicy)
    reporting: ReportingPolicy = field(default_factory=ReportingPolicy)
    training: TrainingBounds = field(default_factory=TrainingBounds)
    source: str = "built-in default"
    sha256: str = ""

    @property
    def secagg_requirements(self) -> SecAggRequirements:
        """The secure-aggregation protocol's view of this policy: its ``[secagg]`` table."""
        return self.secagg


def policy_warnings(policy: SitePolicy) -> list[str]:
    """Return what ``clinfl policy check`` warns about ``policy``, beyond its metrics."""
    return [] if policy.dp.required else [NO_DP_WARNING]


@dataclass(frozen=True)
class PrivacyRequest:
    """What the coordinator asks of a site for a run; None leaves the policy's value."""

    dp: bool | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    epsilon_budget: float | None = None
    secagg: bool | None = None
    min_sites: int | None = None
    metrics: tuple[str, ...] | None = None


_SECTIONS: dict[str, type[Any]] = {
    "dp": DPPolicy,
    "secagg": SecAggRequirements,
    "data": DataPolicy,
    "reporting": ReportingPolicy,
    "training": TrainingBounds,
}


def _check_dp(dp: DPPolicy, p: Problems) -> None:
    for key in ("epsilon_budget", "max_grad_norm", "noise_multiplier", "target_epsilon_per_round"):
        value = getattr(dp, key)
        if value is not None:
            p.positive(f"dp.{key}", value, f"set dp.{key} above zero")
    if not 0 < dp.delta < 1:
        p.add("dp.delta", dp.delta, "0 < delta < 1", "use e.g. 1e-5")
    if dp.accountant not in ACCOUNTANTS:
        p.add("dp.accountant", dp.accountant, "rdp or prv", "use rdp")
    if dp.planned_rounds is not None:
        p.whole("dp.planned_rounds", dp.planned_rounds, 1, fix="plan 1 round or more")
    noise_settings = {
        name: getattr(dp, name)
        for name in ("noise_multiplier", "target_epsilon_per_round", "planned_rounds")
        if getattr(dp, name) is not None
    }
    if len(noise_settings) > 1:
        p.add(
            "dp." + next(iter(noise_settings)),
            ", ".join(f"{k} = {v}" for k, v in noise_settings.items()),
            "only one of noise_multiplier, target_epsilon_per_round and planned_rounds",
            "keep one of them",
        )


def _check_secagg(secagg: SecAggRequirements, p: Problems) -> None:
    p.whole("secagg.min_sites", secagg.min_sites, 2, fix="use 3 or more")
    p.whole("secagg.max_weight", secagg.max_weight, 1, fix="use 10000")
    p.whole("secagg.max_colluders", secagg.max_colluders, 0, fix="use 0 or more (default 1)")
    p.whole("secagg.max_retries", secagg.max_retries, 0, fix="use 0 or more (default 2)")
    p.whole(
        "secagg.max_abandoned_rounds",
        secagg.max_abandoned_rounds,
        0,
        fix="use 0 or more (default 10)",
    )


def _check_data(data: DataPolicy, reporting: ReportingPolicy, p: Problems) -> None:
    p.members("data.modalities", data.modalities, MODALITIES, "remove the unknown values")
    p.members("data.views", data.views, VIEWS, "remove the unknown values")
    p.whole("data.min_samples", data.min_samples, 1, fix="use 1 or more")
    p.members("reporting.metrics", reporting.metrics, METRICS, "remove the unknown values")
    noise = reporting.evaluation_epsilon
    if noise is not None and not (
        isinstance(noise, int | float)
        and not isinstance(noise, bool)
        and math.isfinite(noise)
        and noise > 0
    ):
        p.add(
            "reporting.evaluation_epsilon",
            noise,
            "a finite number > 0",
            "remove it (no evaluation noise) or use e.g. 8",
        )


def _check_training(training: TrainingBounds, p: Problems) -> None:
    for key in ("min_lr", "max_lr"):
        value = getattr(training, key)
        if not (math.isfinite(value) and value > 0):
            p.add(f"training.{key}", value, "a finite number > 0", "use e.g. 1e-6 and 0.1")
    if not p.has("training.min_lr", "training.max_lr") and training.min_lr > training.max_lr:
        p.add(
            "training.min_lr",
            training.min_lr,
            f"<= training.max_lr ({training.max_lr})",
            "lower the minimum or raise the maximum",
        )
    p.whole(
        "training.max_local_epochs", training.max_local_epochs, 1, fix="use 1 or more (default 20)"
    )
    p.whole(
        "training.max_local_steps",
        training.max_local_steps,
        1,
        fix="use 1 or more (default 10000)",
    )
    p.whole("training.min_batch_size", training.min_batch_size, 1, fix="use 8 or more (default 8)")
    p.whole("training.max_batch_size", training.max_batch_size, 1, fix="use e.g. 1024")
    batch = ("training.min_batch_size", "training.max_batch_size")
    if not p.has(*batch) and training.min_batch_size > training.max_batch_size:
        p.add(
            "training.min_batch_size",
            training.min_batch_size,
            f"<= training.max_batch_size ({training.max_batch_size})",
            "lower the minimum or raise the maximum",
        )


def parse_policy(text: str, *, source: str = "<string>") -> SitePolicy:
    """Parse and validate policy TOML.

    Raises:
        ConfigError: if the text is not TOML.
        ValidationError: listing every invalid or unknown field.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"{source} is not valid TOML: {error}", remedy="fix the syntax (see policies/)"
        ) from None
    problems = Problems()
    read = read_tables(raw, _SECTIONS, problems)
    dp_table = read.get("dp", {})
    derived = ("target_epsilon_per_round", "planned_rounds")
    if any(key in dp_table for key in derived) and "noise_multiplier" not in dp_table:
        dp_table["noise_multiplier"] = None  # the site derives its noise instead
    dp = DPPolicy(**dp_table)
    secagg = SecAggRequirements(**read.get("secagg", {}))
    data = DataPolicy(**read.get("data", {}))
    reporting = ReportingPolicy(**read.get("reporting", {}))
    training = TrainingBounds(**read.get("training", {}))
    _check_dp(dp, problems)
    _check_secagg(secagg, problems)
    _check_data(data, reporting, problems)
    _check_training(training, problems)
    problems.raise_if_any(f"policy {source}")
    return SitePolicy(
        dp=as_declared(dp),
        secagg=secagg,
        data=data,
        reporting=reporting,
        training=as_declared(training),
        source=source,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def load_policy(path: Path) -> SitePolicy:
    """Read and validate a policy file.

    Raises:
        ConfigError: if the file cannot be read or is not TOML.
        ValidationError: listing every invalid or unknown field.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"cannot read policy {path}: {error}", remedy="pass a readable TOML file"
        ) from None
    return parse_policy(text, source=str(path))


def apply_request(policy: SitePolicy, request: PrivacyRequest) -> SitePolicy:
    """Return the policy tightened by the coordinator's ``request``.

    Raises:
        PolicyViolation: listing every requested setting that is looser than the policy.
    """
    problems: list[str] = []
    dp, secagg, reporting = policy.dp, policy.secagg, policy.reporting
    if request.dp is False and dp.required:
        problems.append("DP-SGD off, but the policy requires it")
    if request.dp is True and not dp.required:
        dp = replace(dp, required=True)
    if request.noise_multiplier is not None:
        floor = dp.noise_multiplier
        if dp.planned_rounds is not None:  # the site's own noise, derived from its own size
            problems.append(
                f"noise multiplier {request.noise_multiplier} requested, but the policy sets "
                f"its own noise (planned_rounds {dp.planned_rounds})"
            )
        elif floor is not None and request.noise_multiplier < floor:
            problems.append(f"noise multiplier {request.noise_multiplier} < policy {floor}")
        else:
            dp = replace(
                dp,
                noise_multiplier=request.noise_multiplier,
                target_epsilon_per_round=None,
                planned_rounds=None,
            )
    if request.max_grad_norm is not None:
        if request.max_grad_norm > dp.max_grad_norm:
            problems.append(f"clipping norm {request.max_grad_norm} > policy {dp.max_grad_norm}")
        else:
            dp = replace(dp, max_grad_norm=request.max_grad_norm)
    if request.epsilon_budget is not None:
        if request.epsilon_budget > dp.epsilon_budget:
            problems.append(f"epsilon budget {request.epsilon_budget} > policy {dp.epsilon_budget}")
        else:
            dp = replace(dp, epsilon_budget=request.epsilon_budget)
    if request.secagg is False and secagg.required:
        problems.append("secure aggregation off, but the policy requires it")
    if request.secagg is True:
        secagg = replace(secagg, required=True)
    remedy = "a coordinator may only tighten a site's policy; ask the site to change it"
    if request.min_sites is not None:
        if request.min_sites < secagg.min_sites:
            problems.append(f"min sites {request.min_sites} < policy {secagg.min_sites}")
            remedy += (
                " (a federation too small for its secagg.min_sites: docs/secure-aggregation.md, "
                "'Small federations', says what a smaller min_sites means)"
            )
        else:
            secagg = replace(secagg, min_sites=request.min_sites)
    if request.metrics is not None:
        extra = sorted(set(request.metrics) - set(reporting.metrics))
        if extra:
            problems.append(f"metrics the policy keeps at the site: {', '.join(extra)}")
        else:
            reporting = replace(reporting, metrics=tuple(request.metrics))
    if problems:
        raise PolicyViolation(
            f"the site's policy ({policy.source}) refuses the coordinator's request: "
            + "; ".join(problems),
            remedy=remedy,
        )
    return replace(policy, dp=dp, secagg=secagg, reporting=reporting)
