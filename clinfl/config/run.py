"""The run configuration's schema: frozen, typed dataclasses with their defaults.

A :class:`RunConfig` bundles what a federated run needs: the data (:class:`DataConfig`), the method
and its ablation switches (:class:`MethodConfig`), the federation itself
(:class:`FederationConfig`), its secure aggregation (:class:`SecAggConfig`, defined with the
protocol in :mod:`clinfl.secagg.settings`), the sites' policies (:class:`PrivacyConfig`) and
injected dropouts (:class:`Dropout`). Each table of a run configuration file is one of these
(:data:`SECTIONS`). The dataclasses' defaults are the only defaults: the config file reader and
``clinfl simulate``'s options take theirs from here. Values are checked by
:func:`clinfl.config.validation.validate_run_config`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from clinfl.secagg.settings import SecAggConfig
from clinfl.secagg.stages import ROUND_STAGES, stage_name

DatasetName = Literal["digits", "cxr14", "dicom"]
BackboneVariant = Literal["auto", "standard", "small", "compact", "mobilenet_v2", "densenet121"]
NormKind = Literal["group", "batch"]
ClassifierKind = Literal["etf", "learnable"]
QueryKind = Literal["fixed", "learnable"]
QueryScalingKind = Literal["none", "layernorm"]
HeadBiasKind = Literal["prior", "zero"]
SelectionRule = Literal["best", "last"]
TrainingMode = Literal["federated", "local"]

DATASETS: tuple[str, ...] = ("digits", "cxr14", "dicom")
LABEL_SPACE_NAMES: tuple[str, ...] = ("cxr14", "digits", "chexpert", "custom")
UNCERTAIN_LABELS: tuple[str, ...] = ("ones", "zeros")
BACKBONES: tuple[str, ...] = (
    "auto",
    "standard",
    "small",
    "compact",
    "mobilenet_v2",
    "densenet121",
)
NORMS: tuple[str, ...] = ("group", "batch")
CLASSIFIERS: tuple[str, ...] = ("etf", "learnable")
QUERIES: tuple[str, ...] = ("fixed", "learnable")
QUERY_SCALINGS: tuple[str, ...] = ("none", "layernorm")
HEAD_BIASES: tuple[str, ...] = ("prior", "zero")
WIDTHS: tuple[int, ...] = (8, 16, 32, 64)
"""ResNet-18 base widths: 64 is torchvision's network (the paper's); 8, 16 and 32 are CPU-sized
(every stage scaled alike). 16 is the reference benchmark's and the demo's; the benchmark's width
stage measures 8 and 32 against it. The backbone builds exactly these."""
SELECTIONS: tuple[str, ...] = ("best", "last")
TRAINING_MODES: tuple[str, ...] = ("federated", "local")
GRAD_SAMPLE_CHOICES: tuple[str, ...] = (
    "auto",
    "hooks",
    "ew",
    "ghost",
    "mixed-ghost",
    "bookkeeping",
    "functorch",
)
# where an injected dropout may start: the round's stages, in order (train, advertise, ...)
DROP_STAGES: tuple[str, ...] = tuple(stage_name(stage) for stage in ROUND_STAGES)


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load and how to cut it into sites.

    ``cv_folds`` switches to patient-grouped K-fold cross-validation over the whole data set
    (:mod:`clinfl.crossval`): ``group_by`` names the labels file's patient column (default:
    ``Patient ID`` where the table has one; digits use their own groups) and ``cv_seed`` fixes
    the data plan (fold assignment, site ownership, validation parts), so runs with other site
    counts, methods or training seeds share folds and pair.
    ``label_space`` is what the labels mean: ``cxr14`` (ChestX-ray14's 14 findings),
    ``chexpert`` (CheXpert's 14 observations, ``No Finding`` among them), ``digits`` (the demo)
    or ``custom``: the labels file's columns named in ``label_columns``, in that order (the
    model's outputs). ``uncertain_labels`` is how a ``chexpert`` table's uncertain cells (-1)
    count: ``ones`` (U-Ones, the default: an uncertain mention is a finding the reader could
    not exclude) or ``zeros`` (U-Zeros). Blank cells are negatives. See
    :mod:`clinfl.data.label_table`.
    """

    dataset: DatasetName = "digits"
    images: Path | None = None
    labels: Path | None = None
    label_space: str = "cxr14"
    split_dir: Path | None = None
    image_size: int | None = None
    """Training image size in px; ``None``: the data set's preset (:mod:`clinfl.config.presets`)."""
    alpha: float = 0.5
    rho: float = 0.5
    val_fraction: float = 0.15
    composites_per_pair: int = 12
    max_samples: int | None = None
    cv_folds: int | None = None
    group_by: str | None = None
    cv_seed: int = 0
    label_columns: tuple[str, ...] = ()
    uncertain_labels: str = "ones"


@dataclass(frozen=True)
class MethodConfig:
    """The local objective: method name, model shape, loss weights and the paper's ablations.

    ``backbone`` is a ResNet-18 stem: ``standard`` (the paper's), ``small`` (3x3 stride 1, for
    16-64 px), ``compact`` (3x3 stride 2 with ``layer4`` unstrided: ``small``'s token map at about
    a third of its compute) or ``auto`` (``small`` below 64 px, else ``standard``); or a
    pretrainable network: ``mobilenet_v2`` (ImageNet MobileNetV2 from the weights cache unless
    ``pretrained`` is off or ``init_weights`` is given) or ``densenet121`` (the CheXNet and
    TorchXRayVision architecture, from ``init_weights``). ``docs/method.md`` describes them.
    ``width`` is the ResNet-18 base width (64: the paper's full network; 8, 16 or 32: the CPU
    presets; the other backbones ignore it) and ``ladm_width`` LADM's attention width (None: the
    backbone's feature width, ``8 * width`` for ResNet-18).
    ``init_weights`` is a weights file the backbone starts from (safetensors, or a torch state
    dict read with ``weights_only=True``). ``train_blocks`` trains only the backbone's last N
    blocks (None: all of it; 0: the head alone); the earlier ones keep their initial weights
    and never travel.
    ``feature_stride`` is where a ``mobilenet_v2`` or ``densenet121`` backbone ends: 16 cuts it
    after its last stride-16 block (a finer LADM token map), 32 keeps the whole network; None
    takes the backbone's measured default (16 for ``mobilenet_v2``, 32 for ``densenet121``).
    ``query_scaling="layernorm"`` is clinfl's LADM extension (LayerNorm on queries and tokens);
    ``"none"`` is the paper's module. ``head_bias`` is where a linear head's bias starts:
    ``prior`` (the logit of a 1/C prior, as FedNCAlign-ML's classifier bias) or ``zero``.
    Fields that default to ``None`` take the data set's preset when a run resolves
    (:mod:`clinfl.config.presets`: ``width``, ``head_bias``, ``lambda_rej``, ``lambda_con``,
    ``fedcurv_lambda``).
    """

    name: str = "fedncalign"
    backbone: BackboneVariant = "auto"
    norm: NormKind = "group"
    width: int | None = None
    init_weights: Path | None = None
    pretrained: bool = True
    classifier: ClassifierKind = "etf"
    classifier_bias: bool = True
    head_bias: HeadBiasKind | None = None
    ladm: bool = True
    queries: QueryKind = "fixed"
    query_scaling: QueryScalingKind = "none"
    heads: int = 4
    ladm_width: int | None = None
    lambda_rej: float | None = None
    lambda_con: float | None = None
    tau_rej: float = 0.3
    temperature: float = 0.07
    prox_mu: float = 0.01
    fedcurv_lambda: float | None = None
    train_blocks: int | None = None
    feature_stride: int | None = None


@dataclass(frozen=True)
class FederationConfig:
    """Rounds, sites and local optimisation.

    ``threshold_rule`` chooses each class's operating threshold on validation after every round
    (``f1``, ``youden`` or ``sensitivity:S``; see :mod:`clinfl.thresholds`). With ``patience``,
    training ends once validation macro-AUC has not improved for that many rounds (``rounds``
    is then the maximum).

    ``lr`` left ``None`` takes the data set's preset when a run resolves
    (:mod:`clinfl.config.presets`).

    ``local_steps`` switches local training from epochs to a fixed number of optimiser steps per
    round, each on a batch of ``batch_size`` samples (plain training) or Poisson-sampled at rate
    about ``batch_size / N`` (DP-SGD), so a site's work per round does not depend on its size
    (SECAGG.md, "Version 3", R7'). ``local_epochs`` is then unused. A site whose policy keeps
    sample counts at the site declines a run that leaves it unset
    (:func:`clinfl.training_bounds.check_training_mode`).

    ``training="local"`` (cross-validation only) trains each site alone on its own patients,
    with no aggregation, and scores each site's held-out patients with that site's model.

    ``augment_multiplicity`` K > 1 trains each sample as K randomly translated views (De et al.
    2022); under DP-SGD their gradients are averaged per sample before clipping, so the privacy
    charge is unchanged and a step costs about K times (:mod:`site_agent.augmentation`). 1 (the
    default) augments nothing. ``ema_decay`` makes a site send the exponential moving average of
    its parameters over the round's steps, minus the global model, instead of the last step's
    (:mod:`site_agent.weight_average`; post-processing, no privacy cost). ``None``: the last step.
    """

    sites: int = 5
    rounds: int = 6
    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    seed: int = 0
    federation_seed: int = 20240917
    selection: SelectionRule = "best"
    patience: int | None = None
    threads: int | None = None
    device: str = "cpu"
    threshold_rule: str = "f1"
    training: TrainingMode = "federated"
    augment_multiplicity: int = 1
    ema_decay: float | None = None


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
    """Everything one run needs; check it with :func:`~clinfl.config.validate_run_config`."""

    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    drops: tuple[Dropout, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy (paths as strings, tuples as lists, as JSON reads)."""

        def convert(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, tuple | list):
                return [convert(v) for v in value]
            return value

        result: dict[str, Any] = convert(asdict(self))
        return result


# The tables of a run configuration (a file's [data] ... [privacy]; ``drops`` is an array of
# [[drops]] tables): the name of each is the RunConfig field that holds it.
SECTIONS: dict[str, type[Any]] = {
    "data": DataConfig,
    "method": MethodConfig,
    "federation": FederationConfig,
    "secagg": SecAggConfig,
    "privacy": PrivacyConfig,
}
