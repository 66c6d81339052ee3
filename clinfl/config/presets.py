"""Each data set's defaults: the values a run takes for the settings it leaves unset.

Some settings have no one right value for every data set: the image size, the backbone's width,
the learning rate, FedNCAlign-ML's loss weights, FedCurv's strength and a linear head's starting
bias. Their fields in :mod:`clinfl.config.run` default to ``None``, which means "the data set's
preset", and :func:`resolve_presets` fills them from :data:`PRESETS`, the one table of those
values. A run resolves before it does anything else (``clinfl simulate``, ``clinfl coordinator
start``: :func:`resolve_defaults`), so its saved configuration, its
``results.json`` and the configuration hash every site binds carry the resolved values.

The digits preset is what the reference benchmark chose on validation
(``benchmarks/reference.py``, docs/benchmarks.md "Reference accuracy");
``tests/unit/test_validated_defaults.py`` reads the benchmark's results and fails when the two
differ. The X-ray preset (ChestX-ray14 PNGs and DICOM exports) keeps the values clinfl had
before presets existed (the paper's loss weights, the full-width network) until an X-ray
benchmark chooses on validation: filling in :data:`XRAY` is then the whole change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeVar

from clinfl.config.run import DataConfig, HeadBiasKind, RunConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Preset:
    """One data set's values for the settings a run leaves unset (``None``)."""

    image_size: int
    width: int
    lr: float
    lambda_rej: float
    lambda_con: float
    fedcurv_lambda: float
    head_bias: HeadBiasKind
    source: str
    """Where the values come from, in words."""
    unvalidated: tuple[str, ...] = ()
    """The values above that no benchmark has chosen on validation yet (``--help`` says so)."""
    benchmark_settings: tuple[str, ...] = ()
    """The values above that a benchmark trained with as fixed settings, not chosen among
    alternatives on validation (``--help`` says so)."""


DIGITS = Preset(
    image_size=32,
    width=16,
    lr=1e-3,
    lambda_rej=0.01,
    lambda_con=0.1,
    fedcurv_lambda=100.0,
    head_bias="prior",
    source="the reference benchmark (docs/benchmarks.md, Reference accuracy): the learning rate, "
    "loss weights and FedCurv's strength it chose on validation, the image size and width it "
    "trained at; its tuning stage has not yet chosen FedAvg's head, which keeps the prior",
    unvalidated=("head_bias",),
    benchmark_settings=("image_size", "width"),
)
XRAY = Preset(
    image_size=64,
    width=64,
    lr=1e-3,
    lambda_rej=0.01,
    lambda_con=1.0,
    fedcurv_lambda=1e5,
    head_bias="prior",
    source="not yet chosen on X-ray validation data: the paper's loss weights (lambda_rej 0.01 "
    "on complex backgrounds), the full-width ResNet-18 and FedCurv's first tuned strength",
    unvalidated=(
        "image_size",
        "width",
        "lr",
        "lambda_rej",
        "lambda_con",
        "fedcurv_lambda",
        "head_bias",
    ),
)
PRESETS: dict[str, Preset] = {"digits": DIGITS, "xray": XRAY}
"""Preset name -> its values: ``digits`` (the bundled digits, or an export labelled with them)
and ``xray`` (ChestX-ray14 PNGs, DICOM exports)."""

PRESET_FIELDS: dict[str, str] = {
    "data.image_size": "image_size",
    "method.width": "width",
    "federation.lr": "lr",
    "method.lambda_rej": "lambda_rej",
    "method.lambda_con": "lambda_con",
    "method.fedcurv_lambda": "fedcurv_lambda",
    "method.head_bias": "head_bias",
}
"""Run configuration field (``section.key``) -> the :class:`Preset` value that fills it."""

LIBRARY_PRESET = "xray"
"""The preset an algorithm falls back to when it is built from an unresolved method or
federation configuration, outside any run (library use, unit tests): X-rays, what clinfl is for.
A run never relies on it: it resolves by its data set first."""


def preset_name(data: DataConfig) -> str:
    """Return the name of the preset for ``data``: ``digits`` or ``xray``."""
    digits = data.dataset == "digits" or (data.dataset == "dicom" and data.label_space == "digits")
    return "digits" if digits else "xray"


def preset_for(data: DataConfig) -> Preset:
    """Return the preset for ``data``'s data set (see :func:`preset_name`)."""
    return PRESETS[preset_name(data)]


def resolve_presets(config: RunConfig) -> RunConfig:
    """Fill every field of :data:`PRESET_FIELDS` that ``config`` leaves ``None``.

    The values come from the preset of ``config``'s data set; fields that are set keep theirs.
    """
    preset = preset_for(config.data)
    sections: dict[str, Any] = {}
    for field, name in PRESET_FIELDS.items():
        section, _, key = field.partition(".")
        part = sections.get(section, getattr(config, section))
        if getattr(part, key) is None:
            part = replace(part, **{key: getattr(preset, name)})
        sections[section] = part
    return replace(config, **sections)


def resolve_defaults(config: RunConfig) -> RunConfig:
    """Fill the data-set-dependent defaults and turn secure aggregation off for one site.

    The defaults come from the data set's preset (:func:`resolve_presets`:
    image size, width, learning rate, loss weights, FedCurv's strength, a linear head's bias).

    A single site (centralized training) aggregates nothing, so secure aggregation is off.
    """
    config = resolve_presets(config)
    secagg = config.secagg
    if config.federation.sites == 1:
        secagg = replace(secagg, enabled=False)
    return replace(config, secagg=secagg)


def or_library_default(value: T | None, field: str) -> T:
    """Return ``value``, or :data:`LIBRARY_PRESET`'s value of ``field`` where it is ``None``.

    ``field`` is ``section.key``; only an algorithm built outside a run meets ``None``.

    Raises:
        KeyError: if ``field`` is not in :data:`PRESET_FIELDS` (a programming error).
    """
    if value is not None:
        return value
    chosen: T = getattr(PRESETS[LIBRARY_PRESET], PRESET_FIELDS[field])
    return chosen


def preset_help(field: str) -> str:
    """Return the ``--help`` sentence on ``field``'s default.

    It gives each preset's value and whether validation chose it.

    Raises:
        KeyError: if ``field`` is not in :data:`PRESET_FIELDS`.
    """
    name = PRESET_FIELDS[field]
    parts = []
    for preset, label in (("digits", "digits"), ("xray", "X-rays (cxr14, dicom)")):
        value = getattr(PRESETS[preset], name)
        shown = value if isinstance(value, str) else f"{value:g}"
        how = "chosen on validation"
        if name in PRESETS[preset].unvalidated:
            how = "not yet validated"
        elif name in PRESETS[preset].benchmark_settings:
            how = "the reference benchmark's"
        parts.append(f"{label} {shown} ({how})")
    return f"Default: the data set's preset (docs/benchmarks.md): {'; '.join(parts)}."
