"""Federation configuration: frozen, typed, validated once.

A :class:`RunConfig` bundles what a federated run needs: the data (:class:`DataConfig`), the method
and its ablation switches (:class:`MethodConfig`) and the federation itself
(:class:`FederationConfig`, with its secure aggregation in :class:`SecAggConfig` and injected
dropouts in :class:`Dropout`). :func:`validate_run_config` checks every field and raises one
:class:`~clinfl.errors.ValidationError` listing every violation with its value, bound and fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from clinfl.device import is_device_name
from clinfl.errors import ConfigError, ValidationError, Violation
from clinfl.thresholds import RULE_HELP, parse_rule

DatasetName = Literal["digits", "cxr14", "dicom"]
BackboneVariant = Literal["auto", "standard", "small"]
NormKind = Literal["group", "batch"]
ClassifierKind = Literal["etf", "learnable"]
QueryKind = Literal["fixed", "learnable"]
SelectionRule = Literal["best", "last"]

DATASETS: tuple[str, ...] = ("digits", "cxr14", "dicom")
LABEL_SPACE_NAMES: tuple[str, ...] = ("cxr14", "digits")
BACKBONES: tuple[str, ...] = ("auto", "standard", "small")
NORMS: tuple[str, ...] = ("group", "batch")
CLASSIFIERS: tuple[str, ...] = ("etf", "learnable")
QUERIES: tuple[str, ...] = ("fixed", "learnable")
SELECTIONS: tuple[str, ...] = ("best", "last")
DEFAULT_MIN_SITES = 3
GRAD_SAMPLE_CHOICES: tuple[str, ...] = (
    "auto",
    "hooks",
    "ew",
    "ghost",
    "mixed-ghost",
    "functorch",
)
DROP_STAGES: tuple[str, ...] = (
    "train",
    "advertise",
    "graph",
    "share",
    "masked-input",
    "consistency",
    "unmask",
)


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load and how to cut it into sites."""

    dataset: DatasetName = "digits"
    images: Path | None = None
    labels: Path | None = None
    label_space: str = "cxr14"
    split_dir: Path | None = None
    image_size: int | None = None
    alpha: float = 0.5
    rho: float = 0.5
    val_fraction: float = 0.15
    composites_per_pair: int = 12
    max_samples: int | None = None


@dataclass(frozen=True)
class MethodConfig:
    """The local objective: method name, model shape, loss weights and the paper's ablations."""

    name: str = "fedncalign"
    backbone: BackboneVariant = "auto"
    norm: NormKind = "group"
    weights: Path | None = None
    classifier: ClassifierKind = "etf"
    classifier_bias: bool = True
    ladm: bool = True
    queries: QueryKind = "fixed"
    heads: int = 4
    lambda_rej: float | None = None
    lambda_con: float = 1.0
    tau_rej: float = 0.3
    temperature: float = 0.07
    prox_mu: float = 0.01
    fedcurv_lambda: float = 1e5


@dataclass(frozen=True)
class FederationConfig:
    """Rounds, sites and local optimisation.

    ``threshold_rule`` chooses each class's operating threshold on validation after every round
    (``f1``, ``youden`` or ``sensitivity:S``; see :mod:`clinfl.thresholds`).
    """

    sites: int = 5
    rounds: int = 6
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    federation_seed: int = 20240917
    selection: SelectionRule = "best"
    threads: int | None = None
    device: str = "cpu"
    threshold_rule: str = "f1"


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation as the coordinator proposes it (every site checks it against policy).

    ``min_sites`` is what the coordinator asks of every site (None: the sites' own policies
    decide, 3 without policies). ``degree`` and ``threshold`` of None derive from the number of
    sites (SecAgg+ graph of
    degree about 2 log2 n, complete for small n; threshold a strict majority of each
    neighbourhood and at least ``min_sites``). A degree of at least n - 1 is full SecAgg (the
    complete graph); up to 64 sites the graph is always complete. ``max_colluders`` is the
    number of sites the coordinator plans for colluding (sites check with their own policy's
    ``secagg.max_colluders``): the threshold is then ``t > (h + c) / 2`` and a sum needs at
    least ``min_sites + max_colluders`` survivors.
    """

    enabled: bool = True
    min_sites: int | None = None
    bits: int = 32
    clip: float = 0.5
    weight_cap: int = 10_000
    degree: int | None = None
    threshold: int | None = None
    max_colluders: int = 1


@dataclass(frozen=True)
class PrivacyConfig:
    """Site policies for a simulated federation.

    ``policy`` applies one policy file to every site; ``policy_dir`` holds one ``site-K.toml``
    per site. Without either, sites run the built-in research terms: no DP-SGD, and secure
    aggregation as ``--secagg`` says. ``grad_sample_mode`` picks Opacus' per-sample-gradient
    engine (``auto``: the fastest measured for the image size).
    """

    policy: Path | None = None
    policy_dir: Path | None = None
    grad_sample_mode: str = "auto"


@dataclass(frozen=True)
class Dropout:
    """An injected dropout: ``site`` stops answering at ``stage`` (every round, or one round)."""

    site: str
    stage: str
    round: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; build it with :func:`validate_run_config`."""

    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    drops: tuple[Dropout, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy (paths as strings)."""

        def convert(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        result: dict[str, Any] = convert(asdict(self))
        return result


def _check_choice(out: list[Violation], name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        out.append(Violation(name, value, f"one of {', '.join(choices)}", f"use one of {choices}"))


def _check_int(
    out: list[Violation], name: str, value: int, low: int, high: int | None = None
) -> None:
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"{low}..{high}"
        out.append(Violation(name, value, bound, f"set {name} within {bound}"))


def _data_violations(data: DataConfig) -> list[Violation]:
    out: list[Violation] = []
    _check_choice(out, "dataset", data.dataset, DATASETS)
    _check_choice(out, "label_space", data.label_space, LABEL_SPACE_NAMES)
    if data.image_size is not None:
        _check_int(out, "image_size", data.image_size, 16, 1024)
    if not data.alpha > 0:
        out.append(Violation("alpha", data.alpha, "> 0", "use a positive Dirichlet concentration"))
    if not 0 < data.rho <= 1:
        out.append(Violation("rho", data.rho, "0 < rho <= 1", "set --rho in (0, 1], e.g. 0.5"))
    if not 0 < data.val_fraction < 0.5:
        out.append(Violation("val_fraction", data.val_fraction, "0 < v < 0.5", "e.g. 0.15"))
    _check_int(out, "composites_per_pair", data.composites_per_pair, 0)
    if data.max_samples is not None:
        _check_int(out, "max_samples", data.max_samples, 10)
    if data.dataset == "dicom" and data.images is None:
        out.append(
            Violation("images", None, "a folder", "pass --images EXPORT for --dataset dicom")
        )
    if data.dataset == "cxr14" and data.images is None:
        out.append(Violation("images", None, "a folder", "pass --images DIR for --dataset cxr14"))
    if data.dataset == "cxr14" and data.labels is None:
        out.append(Violation("labels", None, "a CSV file", "pass --labels CSV for --dataset cxr14"))
    return out


def _method_violations(method: MethodConfig, known_methods: tuple[str, ...]) -> list[Violation]:
    out: list[Violation] = []
    _check_choice(out, "method", method.name, known_methods)
    _check_choice(out, "backbone", method.backbone, BACKBONES)
    _check_choice(out, "norm", method.norm, NORMS)
    _check_choice(out, "classifier", method.classifier, CLASSIFIERS)
    _check_choice(out, "queries", method.queries, QUERIES)
    if method.heads < 1 or 512 % method.heads:
        out.append(Violation("heads", method.heads, "a divisor of 512", "use 4 (the paper)"))
    for name in ("lambda_con", "tau_rej", "prox_mu", "fedcurv_lambda"):
        if getattr(method, name) < 0:
            out.append(Violation(name, getattr(method, name), ">= 0", f"set {name} >= 0"))
    if method.lambda_rej is not None and method.lambda_rej < 0:
        out.append(Violation("lambda_rej", method.lambda_rej, ">= 0", "set lambda_rej >= 0"))
    if not method.temperature > 0:
        out.append(Violation("temperature", method.temperature, "> 0", "use 0.07 (the paper)"))
    if method.weights is not None and not method.weights.is_file():
        out.append(Violation("weights", str(method.weights), "an existing file", "check the path"))
    return out


def _federation_violations(fed: FederationConfig) -> list[Violation]:
    out: list[Violation] = []
    _check_int(out, "sites", fed.sites, 1, 1000)
    _check_int(out, "rounds", fed.rounds, 1)
    _check_int(out, "local_epochs", fed.local_epochs, 1)
    _check_int(out, "batch_size", fed.batch_size, 1)
    if not fed.lr > 0:
        out.append(Violation("lr", fed.lr, "> 0", "use a positive learning rate, e.g. 1e-3"))
    if fed.weight_decay < 0:
        out.append(Violation("weight_decay", fed.weight_decay, ">= 0", "e.g. 0.01"))
    _check_int(out, "seed", fed.seed, 0)
    _check_int(out, "federation_seed", fed.federation_seed, 0)
    _check_choice(out, "selection", fed.selection, SELECTIONS)
    if fed.threads is not None:
        _check_int(out, "threads", fed.threads, 1, 256)
    if not is_device_name(fed.device):
        out.append(Violation("device", fed.device, "cpu, auto, cuda or cuda:N", "use cpu"))
    try:
        parse_rule(fed.threshold_rule)
    except ConfigError:
        out.append(Violation("threshold_rule", fed.threshold_rule, RULE_HELP, "use f1"))
    return out


def _secagg_violations(secagg: SecAggConfig, sites: int) -> list[Violation]:
    out: list[Violation] = []
    if not secagg.enabled or sites == 1:  # one site (centralized) aggregates nothing
        return out
    min_sites = DEFAULT_MIN_SITES if secagg.min_sites is None else secagg.min_sites
    _check_int(out, "secagg.min_sites", min_sites, 2)
    _check_int(out, "secagg.bits", secagg.bits, 16, 64)
    _check_int(out, "secagg.weight_cap", secagg.weight_cap, 1)
    _check_int(out, "secagg.max_colluders", secagg.max_colluders, 0)
    if not secagg.clip > 0:
        out.append(Violation("secagg.clip", secagg.clip, "> 0", "use 0.5"))
    complete = secagg.degree is not None and secagg.degree >= sites - 1
    if secagg.degree is not None and not complete and (secagg.degree < 2 or secagg.degree % 2):
        out.append(
            Violation(
                "secagg.degree", secagg.degree, "even, >= 2, or >= sites - 1", "leave it unset"
            )
        )
    if secagg.threshold is not None and secagg.threshold < min_sites:
        out.append(
            Violation("secagg.threshold", secagg.threshold, ">= min_sites", "leave it unset")
        )
    if sites >= min_sites and sites < min_sites + secagg.max_colluders:
        out.append(
            Violation(
                "sites",
                sites,
                f">= secagg.min_sites + secagg.max_colluders ({min_sites + secagg.max_colluders})",
                "use more sites: a sum must cover min_sites honest sites besides any colluders",
            )
        )
    if sites < min_sites:
        out.append(
            Violation(
                "sites",
                sites,
                f">= secagg.min_sites ({min_sites})",
                "use more sites, lower --secagg-min-sites, or run with --secagg off",
            )
        )
    if not out:
        room = (2**secagg.bits - 1) / (sites * secagg.weight_cap * 2 * secagg.clip)
        if room < 1:
            out.append(
                Violation(
                    "secagg.bits",
                    secagg.bits,
                    f"enough for {sites} sites x weight cap {secagg.weight_cap}",
                    "use more bits or a smaller weight cap",
                )
            )
    return out


def _privacy_violations(privacy: PrivacyConfig, sites: int) -> list[Violation]:
    out: list[Violation] = []
    _check_choice(out, "grad_sample_mode", privacy.grad_sample_mode, GRAD_SAMPLE_CHOICES)
    if privacy.policy is not None and privacy.policy_dir is not None:
        out.append(
            Violation("policy", str(privacy.policy), "not with --policy-dir", "pass only one")
        )
    if privacy.policy is not None and not privacy.policy.is_file():
        out.append(Violation("policy", str(privacy.policy), "an existing file", "check the path"))
    if privacy.policy_dir is not None:
        missing = [
            f"site-{k + 1}.toml"
            for k in range(sites)
            if not (privacy.policy_dir / f"site-{k + 1}.toml").is_file()
        ]
        if missing:
            out.append(
                Violation(
                    "policy_dir",
                    str(privacy.policy_dir),
                    "a folder with site-1.toml ... site-K.toml",
                    f"add {', '.join(missing)}",
                )
            )
    return out


def _drop_violations(drops: tuple[Dropout, ...], sites: int) -> list[Violation]:
    out: list[Violation] = []
    names = {f"site-{k + 1}" for k in range(sites)}
    for drop in drops:
        if drop.site not in names:
            out.append(Violation("drop", drop.site, f"site-1..site-{sites}", "name a real site"))
        _check_choice(out, "drop stage", drop.stage, DROP_STAGES)
        if drop.round is not None:
            _check_int(out, "drop round", drop.round, 1)
    return out


def validate_run_config(config: RunConfig, *, known_methods: tuple[str, ...]) -> RunConfig:
    """Check every field of ``config`` and return it unchanged when valid.

    Raises:
        ValidationError: listing every invalid field with its value, bound and fix.
    """
    violations = (
        _data_violations(config.data)
        + _method_violations(config.method, known_methods)
        + _federation_violations(config.federation)
        + _secagg_violations(config.secagg, config.federation.sites)
        + _privacy_violations(config.privacy, config.federation.sites)
        + _drop_violations(config.drops, config.federation.sites)
    )
    if violations:
        raise ValidationError("run configuration", violations)
    return config
