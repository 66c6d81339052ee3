"""Checking a run configuration's values: every violation at once (:mod:`clinfl.config.checks`).

:func:`validate_run_config` checks every field of a :class:`~clinfl.config.run.RunConfig` and
raises one :class:`~clinfl.errors.ValidationError` listing every violation with its value, bound
and fix. Whether secure aggregation's sum can overflow is decided by the protocol's own formula
(:func:`~clinfl.secagg.settings.sum_headroom`).
"""

from __future__ import annotations

from clinfl.config import run
from clinfl.config.backbones import FEATURE_STRIDES, PRETRAINABLE, block_count, feature_width
from clinfl.config.checks import Problems
from clinfl.config.federation_size import small_federation_fix
from clinfl.config.presets import resolve_presets
from clinfl.config.run import (
    DataConfig,
    Dropout,
    FederationConfig,
    MethodConfig,
    PrivacyConfig,
    RunConfig,
)
from clinfl.data.label_space import label_space_problems
from clinfl.device import is_device_name
from clinfl.errors import ConfigError
from clinfl.privacy.settings import has_per_sample_gradients
from clinfl.secagg.settings import SecAggConfig, sum_headroom
from clinfl.thresholds import RULE_HELP, parse_rule


def _check_data(data: DataConfig, p: Problems) -> None:
    p.choice("dataset", data.dataset, run.DATASETS)
    p.choice("label_space", data.label_space, run.LABEL_SPACE_NAMES)
    if data.label_space in run.LABEL_SPACE_NAMES:
        p.violations += label_space_problems(data.label_space, data.label_columns)
    p.choice("uncertain_labels", data.uncertain_labels, run.UNCERTAIN_LABELS)
    if data.uncertain_labels == "zeros" and data.label_space != "chexpert":
        p.add(
            "uncertain_labels",
            data.uncertain_labels,
            "only with label_space 'chexpert' (the one space with uncertain labels)",
            "leave uncertain_labels out",
        )
    if data.dataset == "digits" and data.label_space in ("chexpert", "custom"):
        p.add(
            "label_space",
            data.label_space,
            "cxr14 or digits with the digits data set (its labels are the ten digits)",
            "use --dataset cxr14 or dicom for your own labels",
        )
    if data.image_size is not None:
        p.whole("image_size", data.image_size, 16, 1024)
    p.positive("alpha", data.alpha, "use a positive Dirichlet concentration")
    if not 0 < data.rho <= 1:
        p.add("rho", data.rho, "0 < rho <= 1", "set --rho in (0, 1], e.g. 0.5")
    if not 0 < data.val_fraction < 0.5:
        p.add("val_fraction", data.val_fraction, "0 < v < 0.5", "e.g. 0.15")
    p.whole("composites_per_pair", data.composites_per_pair, 0)
    if data.max_samples is not None:
        p.whole("max_samples", data.max_samples, 10)
    if data.cv_folds is not None:
        p.whole("cv_folds", data.cv_folds, 2, fix="use --cv 5 (at least 2 folds)")
        if data.dataset == "dicom":
            p.add("cv_folds", data.cv_folds, "digits or cxr14 data", "drop --cv for dicom")
    if data.group_by is not None and data.cv_folds is None:
        p.add("group_by", data.group_by, "only with --cv", "add --cv K or drop --group-by")
    p.whole("cv_seed", data.cv_seed, 0)
    if data.dataset == "dicom" and data.images is None:
        p.add("images", None, "a folder", "pass --images EXPORT for --dataset dicom")
    if data.dataset == "cxr14" and data.images is None:
        p.add("images", None, "a folder", "pass --images DIR for --dataset cxr14")
    if data.dataset == "cxr14" and data.labels is None:
        p.add("labels", None, "a CSV file", "pass --labels CSV for --dataset cxr14")


def _check_method(method: MethodConfig, known_methods: tuple[str, ...], p: Problems) -> None:
    p.choice("method", method.name, known_methods)
    p.choice("backbone", method.backbone, run.BACKBONES)
    p.choice("norm", method.norm, run.NORMS)
    p.choice("classifier", method.classifier, run.CLASSIFIERS)
    p.choice("queries", method.queries, run.QUERIES)
    p.choice("query_scaling", method.query_scaling, run.QUERY_SCALINGS)
    if method.head_bias is not None:
        p.choice("head_bias", method.head_bias, run.HEAD_BIASES)
    if method.width not in run.WIDTHS:
        p.add("width", method.width, "8, 16, 32 or 64", "use 64 (the full ResNet-18)")
    width = method.width or 0  # None only before a preset fills it (validate resolves first)
    shape_known = _check_backbone_shape(method, p)
    features = (
        feature_width(method.backbone, width, method.feature_stride) if shape_known else 8 * width
    )
    attention = method.ladm_width if method.ladm_width is not None else features
    if method.ladm_width is not None and method.ladm_width < 1:
        p.add("ladm_width", method.ladm_width, ">= 1", "leave it unset")
    elif method.heads < 1 or attention % method.heads:
        p.add(
            "heads",
            method.heads,
            f"a divisor of the attention width {attention}",
            "use 4 (the paper)",
        )
    for name in ("lambda_con", "tau_rej", "prox_mu", "fedcurv_lambda"):
        if getattr(method, name) is not None and getattr(method, name) < 0:
            p.add(name, getattr(method, name), ">= 0", f"set {name} >= 0")
    if method.lambda_rej is not None and method.lambda_rej < 0:
        p.add("lambda_rej", method.lambda_rej, ">= 0", "set lambda_rej >= 0")
    p.positive("temperature", method.temperature, "use 0.07 (the paper)")
    if method.init_weights is not None and not method.init_weights.is_file():
        p.add("init_weights", str(method.init_weights), "an existing file", "check the path")


def _check_backbone_shape(method: MethodConfig, p: Problems) -> bool:
    """Check ``feature_stride`` and ``train_blocks``; return whether the shape is known."""
    if method.backbone not in run.BACKBONES:
        return False  # reported as a choice
    if method.feature_stride is not None:
        if method.backbone not in PRETRAINABLE:
            p.add(
                "feature_stride",
                method.feature_stride,
                f"unset for backbone {method.backbone}",
                f"leave it unset, or use --backbone {' or '.join(PRETRAINABLE)}",
            )
            return False
        if method.feature_stride not in FEATURE_STRIDES:
            strides = ", ".join(map(str, FEATURE_STRIDES))
            p.add("feature_stride", method.feature_stride, strides, "leave it unset")
            return False
    if method.train_blocks is not None:
        blocks = block_count(method.backbone, method.feature_stride)
        fix = f"use 0 (the head only) to {blocks}, or leave it unset to train the whole backbone"
        p.whole("train_blocks", method.train_blocks, 0, blocks, fix=fix)
    return True


def _check_federation(fed: FederationConfig, p: Problems) -> None:
    p.whole("sites", fed.sites, 1, 1000)
    p.whole("rounds", fed.rounds, 1)
    p.whole("local_epochs", fed.local_epochs, 1)
    if fed.local_steps is not None:
        fix = "use 1 or more, or leave it unset to train local_epochs epochs per round"
        p.whole("local_steps", fed.local_steps, 1, fix=fix)
    p.whole("batch_size", fed.batch_size, 1)
    if fed.lr is not None:
        p.positive("lr", fed.lr, "use a positive learning rate, e.g. 1e-3")
    if fed.weight_decay < 0:
        p.add("weight_decay", fed.weight_decay, ">= 0", "e.g. 0.01")
    p.whole("seed", fed.seed, 0)
    p.whole("federation_seed", fed.federation_seed, 0)
    p.choice("selection", fed.selection, run.SELECTIONS)
    if fed.patience is not None:
        p.whole("patience", fed.patience, 1)
    if fed.threads is not None:
        p.whole("threads", fed.threads, 1, 256)
    if not is_device_name(fed.device):
        p.add("device", fed.device, "cpu, auto, cuda or cuda:N", "use cpu")
    p.choice("training", fed.training, run.TRAINING_MODES)
    p.whole(
        "augment_multiplicity",
        fed.augment_multiplicity,
        1,
        fix="use 1 (no augmentation) or a few views, e.g. 4",
    )
    if fed.ema_decay is not None and not 0 < fed.ema_decay < 1:
        p.add("ema_decay", fed.ema_decay, "0 < d < 1", "e.g. 0.9, or leave it unset")
    try:
        parse_rule(fed.threshold_rule)
    except ConfigError:
        p.add("threshold_rule", fed.threshold_rule, RULE_HELP, "use f1")


def _check_secagg(secagg: SecAggConfig, sites: int, p: Problems) -> None:
    if not secagg.enabled or sites < 2:  # one site (centralized) aggregates nothing; fewer
        return  # than one is refused as `sites` itself
    before = len(p)
    min_sites = secagg.sum_floor
    p.whole("secagg.min_sites", min_sites, 2)
    p.whole("secagg.bits", secagg.bits, 16, 64)
    p.whole("secagg.weight_cap", secagg.weight_cap, 1)
    p.whole("secagg.max_colluders", secagg.max_colluders, 0)
    p.positive("secagg.clip", secagg.clip, "use 0.5")
    complete = secagg.degree is not None and secagg.degree >= sites - 1
    if secagg.degree is not None and not complete and (secagg.degree < 2 or secagg.degree % 2):
        p.add("secagg.degree", secagg.degree, "even, >= 2, or >= sites - 1", "leave it unset")
    if secagg.threshold is not None and secagg.threshold < min_sites:
        p.add("secagg.threshold", secagg.threshold, ">= min_sites", "leave it unset")
    valid = not p.has("secagg.min_sites", "secagg.max_colluders")
    if valid and sites < min_sites + secagg.max_colluders:
        p.add(
            "sites",
            sites,
            f">= secagg.min_sites + secagg.max_colluders ({min_sites + secagg.max_colluders}): "
            "a sum must cover min_sites honest sites besides any colluders",
            small_federation_fix(sites, min_sites=min_sites, max_colluders=secagg.max_colluders),
        )
    if len(p) > before:  # the overflow check needs valid numbers
        return
    room = sum_headroom(
        sites=sites, weight_cap=secagg.weight_cap, clip=secagg.clip, bits=secagg.bits
    )
    if room < 1:
        p.add(
            "secagg.bits",
            secagg.bits,
            f"enough for {sites} sites x weight cap {secagg.weight_cap}",
            "use more bits or a smaller weight cap",
        )


def _check_privacy(privacy: PrivacyConfig, sites: int, p: Problems) -> None:
    p.choice("grad_sample_mode", privacy.grad_sample_mode, run.GRAD_SAMPLE_CHOICES)
    if privacy.policy is not None and privacy.policy_dir is not None:
        p.add("policy", str(privacy.policy), "not with --policy-dir", "pass only one")
    if privacy.policy is not None and not privacy.policy.is_file():
        p.add("policy", str(privacy.policy), "an existing file", "check the path")
    if privacy.policy_dir is not None:
        missing = [
            f"site-{k + 1}.toml"
            for k in range(sites)
            if not (privacy.policy_dir / f"site-{k + 1}.toml").is_file()
        ]
        if missing:
            p.add(
                "policy_dir",
                str(privacy.policy_dir),
                "a folder with site-1.toml ... site-K.toml",
                f"add {', '.join(missing)}",
            )


def _check_drops(drops: tuple[Dropout, ...], sites: int, p: Problems) -> None:
    names = {f"site-{k + 1}" for k in range(sites)}
    for drop in drops:
        if drop.site not in names:
            p.add("drop", drop.site, f"site-1..site-{sites}", "name a real site")
        p.choice("drop stage", drop.stage, run.DROP_STAGES)
        if drop.round is not None:
            p.whole("drop round", drop.round, 1)


def validate_run_config(config: RunConfig, *, known_methods: tuple[str, ...]) -> RunConfig:
    """Check every field of ``config`` and return it unchanged when valid.

    Fields left to the data set's preset are checked at their preset values
    (:func:`~clinfl.config.presets.resolve_presets`), so a setting that must fit another one
    (LADM's heads and the backbone's width) is checked against the value the run will use.

    Raises:
        ValidationError: listing every invalid field with its value, bound and fix.
    """
    problems = Problems()
    resolved = resolve_presets(config)
    sites = resolved.federation.sites
    _check_data(resolved.data, problems)
    _check_method(resolved.method, known_methods, problems)
    _check_federation(resolved.federation, problems)
    _check_secagg(resolved.secagg, sites, problems)
    _check_privacy(resolved.privacy, sites, problems)
    if resolved.privacy.grad_sample_mode == "ew" and resolved.method.backbone in PRETRAINABLE:
        # torch's expanded-weights grouped convolution fails on the depthwise layers
        problems.add(
            "grad_sample_mode",
            "ew",
            f"not ew with backbone {resolved.method.backbone}",
            "use bookkeeping, mixed-ghost or hooks",
        )
    mode = resolved.privacy.grad_sample_mode
    per_sample = mode == "auto" or has_per_sample_gradients(mode)
    if resolved.federation.augment_multiplicity > 1 and not per_sample:
        problems.add(
            "grad_sample_mode",
            mode,
            "auto, hooks, ew or functorch with augment_multiplicity > 1 (the views' gradients "
            "are averaged per sample before clipping; ghost norms never form them)",
            "use --dp-mode auto (hooks with multiplicity) or hooks",
        )
    _check_drops(resolved.drops, sites, problems)
    if config.federation.training == "local" and config.data.cv_folds is None:
        fix = "add --cv K: a site's own held-out patients exist only under cross-validation"
        problems.add("training", "local", "only with --cv", fix)
    problems.raise_if_any("run configuration")
    return config
