"""What the reference benchmark runs, and how its tuning stage chooses.

The variants, ablations, grids, seeds and stages of ``benchmarks/reference.py`` (the driver),
and the rules that read its results: :func:`tuning_choices` (each variant's choices on
validation) and :func:`validated_defaults` (what the product's digits preset follows). The
report (``benchmarks/reference_report.py``) reads them from here; this module imports neither
the driver nor a report.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

SEEDS = (0, 1, 2, 3, 4)
TUNING_SEEDS = (100,)
"""Seeds of the tuning stage: never among the evaluation seeds, so no choice is fitted to them.
One seed, to fit the preset's time budget (``--tuning-seeds 100,101`` adds a second)."""

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "centralized": ("fedavg", {}),
    "fedavg": ("fedavg", {}),
    "fedavg_zero_bias": ("fedavg", {"head_bias": "zero"}),
    "fedprox": ("fedprox", {}),
    "scaffold": ("scaffold", {}),
    "fedcurv": ("fedcurv", {}),
    "spherefed": ("spherefed", {}),
    "fedncalign_paper": ("fedncalign", {"query_scaling": "none"}),
    "fedncalign_ln": ("fedncalign", {"query_scaling": "layernorm"}),
}
"""Name -> (algorithm, method options). ``fedncalign_paper`` is the paper's LADM,
``fedncalign_ln`` clinfl's extension (LayerNorm on queries and tokens)."""

ABLATIONS: dict[str, dict[str, Any]] = {
    "no_etf": {"classifier": "learnable"},
    "no_ladm": {"ladm": False},
    "learnable_queries": {"queries": "learnable"},
    "no_rej": {"lambda_rej": 0.0},
    "no_con": {"lambda_con": 0.0},
}
"""FedNCAlign-ML's ablations, each applied to ``ABLATION_BASE`` in ``ABLATION_SETTING``."""
ABLATION_BASE = "fedncalign_paper"
"""The product's default variant (the paper's LADM)."""
ABLATION_SETTING = "s2"
"""Setting 2: where the full model's gain over FedAvg shows (setting 1 is near the ceiling)."""

LR_GRID = (1e-4, 3e-4, 1e-3)
LR_TUNED = ("fedavg", "fedncalign_paper", "fedncalign_ln")
LAMBDA_TUNED = "fedncalign_paper"
"""The variant whose loss weights are tuned; the LayerNorm variant and the ablations share them."""
LAMBDA_REJ_GRID = (0.01, 0.1)
LAMBDA_CON_GRID = (0.1, 0.3)
"""Alternatives to the paper's weights (lambda_rej 1 on clean backgrounds, lambda_con 1); the
paper's own weights are scored by the learning-rate run at the chosen rate. 0 is an ablation."""
HEAD_VARIANT = "fedavg_zero_bias"
"""FedAvg's other head: the tuning stage's ``head`` grid scores it against the prior-bias head
(FedAvg's learning-rate run at its chosen rate), as the loss weights are scored against the
paper's."""
HEAD_CHOICE = "fedavg_head"
"""The key of FedAvg's head choice in :func:`tuning_choices` (``{"head_bias": ...}``): not a
variant, so no cell takes it; the main stage runs both heads, and the report and the product's
digits preset follow the choice."""
BASELINE_GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    "fedprox": ("prox_mu", (0.001, 0.01, 0.1)),
    "fedcurv": ("fedcurv_lambda", (10.0, 100.0, 1e3, 1e4, 1e5)),
}
"""Each baseline's own strength, tuned on validation at FedAvg's chosen learning rate, as
FedNCAlign-ML's loss weights are, with at least the same budget (three values per weight, on
the tuning seeds). Each grid holds the untuned value (:data:`BASE_METHOD`). FedCurv's reaches
two decades lower: its validation score still rose at 1e3, the low end of the first grid."""
PAPER_LAMBDA_REJ = {"digits": 1.0, "nih1000": 0.01}
"""The paper's lambda_rej: 1 on clean backgrounds (digits), 0.01 on complex ones (X-rays)."""
BASE_METHOD: dict[str, Any] = {
    "lambda_con": 1.0,
    "prox_mu": 0.01,
    "fedcurv_lambda": 1e5,
    "head_bias": "prior",
}
"""The untuned values every cell starts from (with :data:`PAPER_LAMBDA_REJ`): the paper's loss
weights, FedProx's and FedCurv's first strengths, the prior-bias head. Written out, so the
benchmark never trains with the product's presets (which follow its choices:
clinfl/config/presets.py) and a rerun tunes from the same start."""
TUNING_GRIDS = ("lr", "lambda", "baseline", "head")
"""The tuning stage's grids (``--tuning-grids``)."""
STAGES = ("tune", "main", "ablation", "width", "long")
"""The stages in the order they run: tuning first, its choices feed the others."""
LONG_FACTOR = 2
"""The ``long`` stage's round cap, in multiples of ``--max-rounds``."""
WIDTH_GRID = (8, 32)
WIDTH_VARIANTS = ("fedavg", "fedncalign_paper")
WIDTH_SEEDS = (0, 1)
RELATIVE_COST = {"fedcurv": 2.0, "scaffold": 1.3, "centralized": 1.2}


def tuning_choices(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return each variant's choices from the tuning stage: ``{variant: {"lr": .., ...}}``.

    The learning rate with the best mean validation macro-AUC (over the tuning seeds) per tuned
    variant; FedAvg's applies to the other linear-head baselines, which share its head and
    objective. lambda_rej and lambda_con are chosen the same way for ``LAMBDA_TUNED``, among
    the grid and the paper's weights (scored by that variant's learning-rate run at its chosen
    rate), and shared by both FedNCAlign-ML variants (the ablations use them too). FedProx's mu
    and FedCurv's lambda are chosen among :data:`BASELINE_GRIDS` (kept only where they differ
    from the untuned value, :data:`BASE_METHOD`). FedAvg's head is chosen between the
    prior-bias head (FedAvg's learning-rate run at its chosen rate) and :data:`HEAD_VARIANT`'s
    tuning runs, under :data:`HEAD_CHOICE` (absent without those runs). Test data choose
    nothing. Empty without tuning results.
    """
    tune = [r for r in runs if r.get("stage") == "tune" and "error" not in r and r.get("best")]

    def best_of(rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], Any]) -> Any:
        groups: dict[Any, list[float]] = {}
        for row in rows:
            groups.setdefault(value(row), []).append(row["best"]["val_macro_auc"])
        return max(groups, key=lambda k: sum(groups[k]) / len(groups[k])) if groups else None

    choices: dict[str, dict[str, Any]] = {}
    for variant in LR_TUNED:
        lr = best_of([r for r in tune if r["variant"] == variant and r["lr"]], lambda r: r["lr"])
        if lr is not None:
            choices[variant] = {"lr": lr}
    if "fedavg" in choices:
        for variant in ("fedavg_zero_bias", "fedprox", "scaffold", "fedcurv", "spherefed"):
            choices[variant] = dict(choices["fedavg"])
        choices["centralized"] = dict(choices["fedavg"])
    for variant, (name, _) in BASELINE_GRIDS.items():
        rows = [r for r in tune if r["variant"] == variant and name in r.get("options", {})]
        value = best_of(rows, partial(_option, name=name))
        if value is not None and value != baseline_default(name):
            choices.setdefault(variant, {})[name] = value
    for name in ("lambda_rej", "lambda_con"):
        rows = [r for r in tune if r["variant"] == LAMBDA_TUNED and name in r.get("options", {})]
        paper = [
            r
            for r in tune
            if r["variant"] == LAMBDA_TUNED
            and not r.get("options")
            and r["lr"] == choices.get(LAMBDA_TUNED, {}).get("lr")
        ]
        value = best_of(rows + paper, partial(_option, name=name)) if rows else None
        if value is not None and value != PAPER_WEIGHT:
            for variant in ("fedncalign_paper", "fedncalign_ln"):
                choices.setdefault(variant, {})[name] = value
    fedavg_lr = choices.get("fedavg", {}).get("lr")
    heads = [
        r
        for r in tune
        if (r["variant"] == HEAD_VARIANT and not r.get("options"))
        or (r["variant"] == "fedavg" and not r.get("options") and r["lr"] == fedavg_lr)
    ]
    if any(r["variant"] == HEAD_VARIANT for r in heads):
        head = best_of(heads, lambda r: "zero" if r["variant"] == HEAD_VARIANT else "prior")
        choices[HEAD_CHOICE] = {"head_bias": head}
    return choices


def validated_defaults(results: dict[str, Any]) -> dict[str, Any]:
    """Return the digits settings the benchmark in ``results`` chose or trained with.

    By run configuration field (``section.key``), for the product's digits preset
    (clinfl/config/presets.py) to follow: the learning rate (FedNCAlign-ML's, the product's
    method), the loss weights and the baselines' strengths that :func:`tuning_choices` made
    (the untuned value where it kept that), FedAvg's head where the tuning stage chose one, and
    the image size and base width that the main stage's digits runs trained at (read from each
    run's recorded configuration). Empty without tuning results.

    Raises:
        ValueError: if the main digits runs trained at more than one image size or width.
    """
    runs = [r for r in results.get("runs", []) if "error" not in r]
    choices = tuning_choices(runs)
    if not choices:
        return {}
    method = choices.get(LAMBDA_TUNED, {})
    chosen: dict[str, Any] = {
        "federation.lr": method["lr"],
        "method.lambda_rej": method.get("lambda_rej", PAPER_LAMBDA_REJ["digits"]),
        "method.lambda_con": method.get("lambda_con", BASE_METHOD["lambda_con"]),
    }
    for variant, (name, _) in BASELINE_GRIDS.items():
        chosen[f"method.{name}"] = choices.get(variant, {}).get(name, baseline_default(name))
    if HEAD_CHOICE in choices:
        chosen["method.head_bias"] = choices[HEAD_CHOICE]["head_bias"]
    main = [r for r in runs if r.get("stage") == "main" and r.get("dataset") == "digits"]
    for field in ("data.image_size", "method.width"):
        section, _, key = field.partition(".")
        values = {r["config"][section][key] for r in main if r.get("config")}
        if len(values) > 1:
            raise ValueError(f"the main digits runs trained at several {key}s: {sorted(values)}")
        if values:
            chosen[field] = values.pop()
    return chosen


PAPER_WEIGHT = "paper"
"""How ``tuning_choices`` labels the paper's own loss weight (the method's default)."""


def baseline_default(name: str) -> Any:
    """The untuned value of a baseline's strength (:data:`BASE_METHOD`)."""
    return BASE_METHOD[name]


def _option(row: dict[str, Any], *, name: str) -> Any:
    return row.get("options", {}).get(name, PAPER_WEIGHT)
