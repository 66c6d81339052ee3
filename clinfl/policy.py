"""Site privacy policies: a frozen, validated schema read from TOML (never evaluated as code).

A hospital's privacy officer writes the site's terms in a policy file (``policies/*.toml``). The
site agent enforces them itself. :func:`load_policy` checks every field at once and raises one
:class:`~clinfl.errors.ValidationError` that names each bad field with its value, bound and fix.
:func:`apply_request` merges what the coordinator asks for. A request may only tighten the
policy; anything looser is refused with :class:`~clinfl.errors.PolicyViolation`.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from clinfl.errors import ConfigError, PolicyViolation, ValidationError, Violation
from clinfl.secagg.settings import SecAggRequirements

ACCOUNTANTS = ("rdp", "prv")
MODALITIES = ("CR", "DX", "CT", "MR", "US", "MG", "XA", "RF", "NM", "PT", "OT")
VIEWS = ("PA", "AP", "LL", "RL", "LATERAL", "OBLIQUE")
METRICS = ("loss", "auc", "counts", "epsilon", "ingest")


@dataclass(frozen=True)
class DPPolicy:
    """DP-SGD terms. Exactly one of ``noise_multiplier`` and ``target_epsilon_per_round``."""

    required: bool = True
    epsilon_budget: float = 8.0
    delta: float = 1e-5
    noise_multiplier: float | None = 1.0
    target_epsilon_per_round: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    secure_rng: bool = True


@dataclass(frozen=True)
class SecAggPolicy:
    """Secure-aggregation terms.

    ``max_colluders`` is how many sites the site assumes may collude with a malicious
    coordinator (``c`` in SECAGG.md, "Version 2").
    """

    required: bool = True
    min_sites: int = 3
    max_weight: int = 10_000
    max_colluders: int = 1


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

    A round whose learning rate, local epochs or batch size lies outside these bounds is refused
    before any training step (:func:`clinfl.training_bounds.check_round_settings`). A batch
    minimum above 1 keeps one sample from being a whole step's gradient.
    """

    min_lr: float = 1e-6
    max_lr: float = 0.1
    max_local_epochs: int = 20
    min_batch_size: int = 8
    max_batch_size: int = 1024


@dataclass(frozen=True)
class ReportingPolicy:
    """Which metrics may leave the site."""

    metrics: tuple[str, ...] = ("loss", "auc", "counts", "epsilon")


@dataclass(frozen=True)
class SitePolicy:
    """A site's whole policy, with the SHA-256 of the file it came from."""

    dp: DPPolicy = field(default_factory=DPPolicy)
    secagg: SecAggPolicy = field(default_factory=SecAggPolicy)
    data: DataPolicy = field(default_factory=DataPolicy)
    reporting: ReportingPolicy = field(default_factory=ReportingPolicy)
    training: TrainingBounds = field(default_factory=TrainingBounds)
    source: str = "built-in default"
    sha256: str = ""

    @property
    def secagg_requirements(self) -> SecAggRequirements:
        """The secure-aggregation protocol's view of this policy."""
        return SecAggRequirements(
            required=self.secagg.required,
            min_sites=self.secagg.min_sites,
            max_weight=self.secagg.max_weight,
            max_colluders=self.secagg.max_colluders,
        )


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


_SECTIONS: dict[str, type] = {
    "dp": DPPolicy,
    "secagg": SecAggPolicy,
    "data": DataPolicy,
    "reporting": ReportingPolicy,
    "training": TrainingBounds,
}


def _expect(out: list[Violation], name: str, value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        label = " or ".join(k.__name__ for k in kinds)
        out.append(Violation(name, value, label, f"write {name} as a {label}"))
    return ok


def _read_section(out: list[Violation], name: str, raw: Any) -> dict[str, Any]:
    schema = _SECTIONS[name]
    if not isinstance(raw, dict):
        out.append(Violation(name, raw, "a [table]", f"write [{name}] as a TOML table"))
        return {}
    known = {f.name for f in fields(schema)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            out.append(
                Violation(f"{name}.{key}", value, ", ".join(sorted(known)), "remove or rename it")
            )
            continue
        values[key] = tuple(value) if isinstance(value, list) else value
    return values


def _check_dp(out: list[Violation], dp: dict[str, Any]) -> None:
    for key in ("required", "secure_rng"):
        if key in dp:
            _expect(out, f"dp.{key}", dp[key], bool)
    for key in ("epsilon_budget", "max_grad_norm", "noise_multiplier", "target_epsilon_per_round"):
        if key in dp and _expect(out, f"dp.{key}", dp[key], (int, float)) and not dp[key] > 0:
            out.append(Violation(f"dp.{key}", dp[key], "> 0", f"set dp.{key} above zero"))
    delta = dp.get("delta", DPPolicy.delta)
    if _expect(out, "dp.delta", delta, (int, float)) and not 0 < delta < 1:
        out.append(Violation("dp.delta", delta, "0 < delta < 1", "use e.g. 1e-5"))
    if "accountant" in dp and dp["accountant"] not in ACCOUNTANTS:
        out.append(Violation("dp.accountant", dp["accountant"], "rdp or prv", "use rdp"))
    if "target_epsilon_per_round" in dp and "noise_multiplier" not in dp:
        dp["noise_multiplier"] = None
    if dp.get("noise_multiplier") is not None and dp.get("target_epsilon_per_round") is not None:
        out.append(
            Violation(
                "dp.noise_multiplier",
                dp["noise_multiplier"],
                "only one of noise_multiplier and target_epsilon_per_round",
                "remove one of the two",
            )
        )


def _check_enum_list(
    out: list[Violation], name: str, value: Any, allowed: tuple[str, ...] | None
) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        out.append(Violation(name, value, "a list of strings", f'write {name} = ["..."]'))
        return
    if allowed is not None:
        unknown = [v for v in value if v not in allowed]
        if unknown:
            out.append(Violation(name, unknown, ", ".join(allowed), "remove the unknown values"))


def _check_min_int(
    out: list[Violation], section: str, values: dict[str, Any], key: str, low: int, fix: str
) -> None:
    name = f"{section}.{key}"
    value = values.get(key)
    if key in values and _expect(out, name, value, int) and isinstance(value, int) and value < low:
        out.append(Violation(name, value, f">= {low}", fix))


def _check_rest(out: list[Violation], sections: dict[str, dict[str, Any]]) -> None:
    secagg, data, reporting = sections["secagg"], sections["data"], sections["reporting"]
    if "required" in secagg:
        _expect(out, "secagg.required", secagg["required"], bool)
    _check_min_int(out, "secagg", secagg, "min_sites", 2, "use 3 or more")
    _check_min_int(out, "secagg", secagg, "max_weight", 1, "use 10000")
    _check_min_int(out, "secagg", secagg, "max_colluders", 0, "use 0 or more (default 1)")
    for key, allowed in (("modalities", MODALITIES), ("views", VIEWS), ("body_parts", None)):
        if key in data:
            _check_enum_list(out, f"data.{key}", data[key], allowed)
    _check_min_int(out, "data", data, "min_samples", 1, "use 1 or more")
    if "metrics" in reporting:
        _check_enum_list(out, "reporting.metrics", reporting["metrics"], METRICS)


def _check_training(out: list[Violation], training: dict[str, Any]) -> None:
    lr_ok = True
    for key in ("min_lr", "max_lr"):
        if key not in training:
            continue
        name, value = f"training.{key}", training[key]
        if not _expect(out, name, value, (int, float)):
            lr_ok = False
        elif not (math.isfinite(value) and value > 0):
            out.append(Violation(name, value, "a finite number > 0", "use e.g. 1e-6 and 0.1"))
            lr_ok = False
        else:
            training[key] = float(value)
    low_lr = training.get("min_lr", TrainingBounds.min_lr)
    high_lr = training.get("max_lr", TrainingBounds.max_lr)
    if lr_ok and low_lr > high_lr:
        out.append(
            Violation(
                "training.min_lr",
                low_lr,
                f"<= training.max_lr ({high_lr})",
                "lower the minimum or raise the maximum",
            )
        )
    _check_min_int(out, "training", training, "max_local_epochs", 1, "use 1 or more (default 20)")
    before = len(out)
    _check_min_int(out, "training", training, "min_batch_size", 1, "use 8 or more (default 8)")
    _check_min_int(out, "training", training, "max_batch_size", 1, "use e.g. 1024")
    low_batch = training.get("min_batch_size", TrainingBounds.min_batch_size)
    high_batch = training.get("max_batch_size", TrainingBounds.max_batch_size)
    if len(out) == before and low_batch > high_batch:
        out.append(
            Violation(
                "training.min_batch_size",
                low_batch,
                f"<= training.max_batch_size ({high_batch})",
                "lower the minimum or raise the maximum",
            )
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
    out: list[Violation] = []
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for name, value in raw.items():
        if name not in _SECTIONS:
            out.append(Violation(name, "...", ", ".join(_SECTIONS), "remove the unknown table"))
            continue
        sections[name] = _read_section(out, name, value)
    _check_dp(out, sections["dp"])
    _check_rest(out, sections)
    _check_training(out, sections["training"])
    if out:
        raise ValidationError(f"policy {source}", out)
    return SitePolicy(
        dp=DPPolicy(**sections["dp"]),
        secagg=SecAggPolicy(**sections["secagg"]),
        data=DataPolicy(**sections["data"]),
        reporting=ReportingPolicy(**sections["reporting"]),
        training=TrainingBounds(**sections["training"]),
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
        if floor is not None and request.noise_multiplier < floor:
            problems.append(f"noise multiplier {request.noise_multiplier} < policy {floor}")
        else:
            dp = replace(
                dp, noise_multiplier=request.noise_multiplier, target_epsilon_per_round=None
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
    if request.min_sites is not None:
        if request.min_sites < secagg.min_sites:
            problems.append(f"min sites {request.min_sites} < policy {secagg.min_sites}")
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
            remedy="a coordinator may only tighten a site's policy; ask the site to change it",
        )
    return replace(policy, dp=dp, secagg=secagg, reporting=reporting)
