"""Render the reference benchmark (``benchmarks/results/reference.json``) as Markdown tables.

Every number comes from the JSON the run wrote; nothing here is typed in by hand except the
paper's published numbers (``PAPER_TABLES``, METHOD.md section 8).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.accuracy_report import CLOSEST_PAPER, PAPER_TABLES, SETTING_TITLES
from benchmarks.paired_stats import PairedGain, paired_gain
from benchmarks.reference_grid import (
    ABLATION_SETTING,
    BASELINE_GRIDS,
    HEAD_CHOICE,
    HEAD_VARIANT,
    LAMBDA_TUNED,
    baseline_default,
    tuning_choices,
)

Run = dict[str, Any]
NAMES = {
    "centralized": "centralized",
    "fedavg": "FedAvg (prior bias)",
    "fedavg_zero_bias": "FedAvg (zero bias)",
    "fedprox": "FedProx",
    "fedprox+tuned": "FedProx (mu tuned)",
    "scaffold": "SCAFFOLD",
    "fedcurv": "FedCurv",
    "fedcurv+tuned": "FedCurv (lambda tuned)",
    "spherefed": "SphereFed",
    "fedncalign_paper+tuned": "FedNCAlign-ML (paper LADM, loss weights tuned)",
    "fedncalign_paper": "FedNCAlign-ML (paper LADM)",
    "fedncalign_ln+tuned": "FedNCAlign-ML (LADM + LayerNorm, loss weights tuned)",
    "fedncalign_ln": "FedNCAlign-ML (LADM + LayerNorm, clinfl)",
}
"""Display names; ``+tuned`` marks runs with the loss weights (FedNCAlign-ML) or the strength
(FedProx, FedCurv) chosen on validation where it differs from the default (the others have the
paper's weights, the product's defaults)."""
METHODS = ("fedncalign_paper+tuned", "fedncalign_paper", "fedncalign_ln+tuned", "fedncalign_ln")
TUNED = "+tuned"
DATASET_TITLES = {
    "digits": "Digits composites (all of sklearn's digits, 32 px, 10 labels)",
    "nih1000": "NIH1000 (real ChestX-ray14, 64 px, 14 labels, official split: its test set is 310 "
    "images of only 15 patients, so these figures cannot compare methods; see the cross-validated "
    "X-ray table)",
}


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def _ok(runs: list[Run]) -> list[Run]:
    return [r for r in runs if "error" not in r and r.get("best")]


def _f1(run: Run) -> float:
    value = run["best"].get("macro_f1_at_thresholds")
    return float("nan") if value is None else float(value)


def _by_seed(runs: list[Run], metric: Callable[[Run], float]) -> dict[int, float]:
    return {int(r["seed"]): metric(r) for r in runs}


def _gain_row(label: str, gain: PairedGain | None, *, detectable: bool) -> str:
    if gain is None:
        return f"| {label} | - | - | - | - |" + (" - |" if detectable else "")
    diffs = ", ".join(f"{100 * d:+.2f}" for d in gain.differences)
    interval = (
        "-" if math.isnan(gain.ci_low) else f"[{100 * gain.ci_low:+.2f}, {100 * gain.ci_high:+.2f}]"
    )
    row = f"| {label} | {diffs} | {100 * gain.mean:+.2f} | {interval} | {gain.verdict} |"
    if detectable:
        row += " -" if math.isnan(gain.detectable) else f" {100 * gain.detectable:.2f} |"
    return row


def _main_tables(runs: list[Run], dataset: str, setting: str) -> list[str]:
    cell = [r for r in runs if r["dataset"] == dataset and r["setting"] in (setting, "none")]
    variants = [v for v in NAMES if any(r["variant"] == v for r in cell)]
    if not variants:
        return []
    out = [
        f"#### {SETTING_TITLES[setting]}",
        "",
        "| method | seeds | test macro-AUC | test macro-F1 (val thresholds) | macro-F1 at 0.5 "
        "| selected round | rounds run | stopped by patience before the cap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant in variants:
        rows = [r for r in cell if r["variant"] == variant]
        out.append(
            f"| {NAMES[variant]} | {len(rows)} | {_mean_sd([r['best']['macro_auc'] for r in rows])}"
            f" | {_mean_sd([_f1(r) for r in rows])}"
            f" | {_mean_sd([r['best']['macro_f1'] for r in rows])}"
            f" | {statistics.fmean(r['best']['round'] for r in rows):.1f}"
            f" | {statistics.fmean(len(r['rounds']) for r in rows):.1f}"
            f" | {sum(1 for r in rows if r.get('converged'))} of {len(rows)} |"
        )
    early = [
        f"{NAMES[v]} ({stopped} of {total})"
        for v in variants
        if v not in METHODS and v != "centralized"
        for total, stopped in [_stopped([r for r in cell if r["variant"] == v])]
        if 2 * stopped > total
    ]
    if early:
        out += [
            "",
            f"Patience stopped most runs of {', '.join(early)} before the cap: the gains over "
            f"them below are shaped by early stopping (an equal, longer budget, where measured, "
            f"is the headline above).",
        ]
    paper = PAPER_TABLES.get(CLOSEST_PAPER.get((dataset, setting), ""), {})
    if paper:
        title = CLOSEST_PAPER[(dataset, setting)]
        values = "; ".join(f"{m} {v[0]:.2f}" for m, v in paper.items() if v[0] is not None)
        out += ["", f"The paper, {title} (macro-AUC): {values}."]
    detectable = dataset == "nih1000"
    for metric, label in (("auc", "macro-AUC"), ("f1", "macro-F1 at validation thresholds")):
        measure: Callable[[Run], float] = (
            (lambda r: float(r["best"]["macro_auc"])) if metric == "auc" else _f1
        )
        out += [
            "",
            f"Paired gain in {label} (points; one difference per seed, 95% t-interval):",
            "",
            "| comparison | per seed | mean | 95% CI | verdict |"
            + (" smallest detectable |" if detectable else ""),
            "| --- | --- | --- | --- | --- |" + (" --- |" if detectable else ""),
        ]
        for method in METHODS:
            mine = _by_seed([r for r in cell if r["variant"] == method], measure)
            if not mine:
                continue
            for baseline in variants:
                if baseline in METHODS or baseline == "centralized":
                    continue
                theirs = _by_seed([r for r in cell if r["variant"] == baseline], measure)
                gain = paired_gain(mine, theirs)
                out.append(
                    _gain_row(f"{NAMES[method]} − {NAMES[baseline]}", gain, detectable=detectable)
                )
        pairs = (
            ("fedncalign_ln", "fedncalign_paper", "LayerNorm LADM − paper LADM"),
            ("fedncalign_paper+tuned", "fedncalign_paper", "tuned − paper loss weights"),
        )
        for mine_name, theirs_name, label in pairs:
            if {mine_name, theirs_name} <= {r["variant"] for r in cell}:
                a, b = (
                    _by_seed([r for r in cell if r["variant"] == m], measure)
                    for m in (mine_name, theirs_name)
                )
                out.append(_gain_row(label, paired_gain(a, b), detectable=detectable))
    return out


def _stopped(runs: list[Run]) -> tuple[int, int]:
    """Return how many of ``runs`` there are and how many patience stopped before the cap."""
    return len(runs), sum(1 for r in runs if r.get("converged"))


def _diagnostics_table(runs: list[Run]) -> list[str]:
    rows = []
    for dataset in DATASET_TITLES:
        for variant in METHODS:
            chosen = [r for r in runs if r["dataset"] == dataset and r["variant"] == variant]
            first, best = [], []
            for run in chosen:
                diag = [d for d in (x.get("model_diagnostics") for x in run["rounds"]) if d]
                if not diag:
                    continue
                first.append(diag[0])
                selected = next(x for x in run["rounds"] if x["round"] == run["best"]["round"])
                best.append(selected.get("model_diagnostics") or diag[-1])
            if not best:
                continue

            def mean(items: list[dict[str, float]], key: str) -> float:
                return statistics.fmean(d[key] for d in items)

            rows.append(
                f"| {dataset} | {NAMES[variant]} | {len(best)} "
                f"| {mean(best, 'uniform_entropy'):.4f} "
                f"| {mean(first, 'attention_entropy'):.4f} | {mean(best, 'attention_entropy'):.4f} "
                f"| {mean(first, 'class_feature_cosine'):.4f} "
                f"| {mean(best, 'class_feature_cosine'):.4f} |"
            )
    if not rows:
        return []
    return [
        "### Does LADM attend? (validation images, both skew settings)",
        "",
        "Attention entropy in nats (its ceiling, uniform attention, is log of the number of "
        "tokens) and the mean cosine between the class features of one image (1.0000: one "
        "vector for every class), after round 1 and at the selected round; means over runs.",
        "",
        "| data set | LADM | runs | uniform entropy | entropy, round 1 | entropy, selected "
        "| cosine, round 1 | cosine, selected |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]


def _tuning_tables(runs: list[Run], choices: dict[str, dict[str, Any]]) -> list[str]:
    tune = [r for r in runs if r.get("stage") == "tune"]
    if not tune:
        return []
    out = [
        "### Choices made on validation (digits, setting 1, tuning seeds "
        + ", ".join(str(x) for x in sorted({int(r["seed"]) for r in tune}))
        + ")",
        "",
        "Mean validation macro-AUC at each run's best round (test data are not read for these "
        "choices, and the tuning seeds are not among the evaluation seeds).",
        "",
        "| method | learning rate | val macro-AUC | rounds run |",
        "| --- | --- | --- | --- |",
    ]
    for variant in ("fedavg", "fedncalign_paper", "fedncalign_ln"):
        for lr in sorted({r["lr"] for r in tune if r["variant"] == variant and r["lr"]}):
            rows = [r for r in tune if r["variant"] == variant and r["lr"] == lr]
            mark = " (chosen)" if choices.get(variant, {}).get("lr") == lr else ""
            out.append(
                f"| {NAMES[variant]} | {lr:g}{mark} "
                f"| {_mean_sd([r['best']['val_macro_auc'] for r in rows])} "
                f"| {statistics.fmean(len(r['rounds']) for r in rows):.1f} |"
            )
    chosen_lr = choices.get(LAMBDA_TUNED, {}).get("lr")
    paper = [
        r
        for r in tune
        if r["variant"] == LAMBDA_TUNED and not r.get("options") and r["lr"] == chosen_lr
    ]
    for name in ("lambda_rej", "lambda_con"):
        values = sorted({r["options"][name] for r in tune if name in r.get("options", {})})
        if not values:
            continue
        picked = choices.get(LAMBDA_TUNED, {}).get(name)
        out += [
            "",
            f"| {name} ({NAMES[LAMBDA_TUNED]}, lr {chosen_lr:g}) | val macro-AUC |",
            "| --- | --- |",
        ]
        if paper:
            mark = " (chosen)" if picked is None else ""
            scores = [r["best"]["val_macro_auc"] for r in paper]
            out.append(f"| the paper's weight{mark} | {_mean_sd(scores)} |")
        for value in values:
            rows = [r for r in tune if r.get("options", {}).get(name) == value]
            mark = " (chosen)" if picked == value else ""
            out.append(
                f"| {value:g}{mark} | {_mean_sd([r['best']['val_macro_auc'] for r in rows])} |"
            )
    return out + _baseline_tuning_tables(tune, choices) + _head_tuning_table(tune, choices)


def _head_tuning_table(tune: list[Run], choices: dict[str, dict[str, Any]]) -> list[str]:
    """FedAvg's head on validation, or a line saying that the tuning stage did not choose it."""
    lr = choices.get("fedavg", {}).get("lr")
    zero = [r for r in tune if r["variant"] == HEAD_VARIANT and not r.get("options")]
    if not zero:
        return [
            "",
            "FedAvg's head (prior or zero bias) was not chosen on validation in this run: its "
            "tuning stage predates the `head` grid. The main tables run both heads; the next "
            "run of the tuning stage chooses between them.",
        ]
    prior = [
        r for r in tune if r["variant"] == "fedavg" and not r.get("options") and r["lr"] == lr
    ]
    picked = choices.get(HEAD_CHOICE, {}).get("head_bias")
    at = f", lr {lr:g}" if lr else ""
    out = ["", f"| FedAvg's head{at} | val macro-AUC |", "| --- | --- |"]
    for head, rows in (("prior", prior), ("zero", zero)):
        if rows:
            mark = " (chosen)" if head == picked else ""
            scores = [r["best"]["val_macro_auc"] for r in rows]
            out.append(f"| {head}{mark} | {_mean_sd(scores)} |")
    return out


def _baseline_tuning_tables(tune: list[Run], choices: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    lr = choices.get("fedavg", {}).get("lr")
    for variant, (name, _) in BASELINE_GRIDS.items():
        rows = [r for r in tune if r["variant"] == variant and name in r.get("options", {})]
        if not rows:
            continue
        picked = choices.get(variant, {}).get(name, baseline_default(name))
        at = f", FedAvg's lr {lr:g}" if lr else ""
        out += ["", f"| {name} ({NAMES[variant]}{at}) | val macro-AUC |", "| --- | --- |"]
        for value in sorted({r["options"][name] for r in rows}):
            scores = [r["best"]["val_macro_auc"] for r in rows if r["options"][name] == value]
            default = " (default)" if value == baseline_default(name) else ""
            mark = " (chosen)" if value == picked else ""
            out.append(f"| {value:g}{default}{mark} | {_mean_sd(scores)} |")
    return out


def _ablation_table(runs: list[Run], main: list[Run]) -> list[str]:
    ablations = [r for r in runs if r.get("stage") == "ablation"]
    if not ablations:
        return []
    base = [r for r in main if r["dataset"] == "digits" and r["setting"] == ABLATION_SETTING]
    base_variant = ablations[0]["variant"]  # with its tuned loss weights, as the ablations have
    full = _by_seed([r for r in base if r["variant"] == base_variant], _auc)
    fedavg = _by_seed([r for r in base if r["variant"] == "fedavg"], _auc)
    out = [
        f"### Ablations (digits, {SETTING_TITLES[ABLATION_SETTING].lower()}, "
        f"{NAMES[base_variant]} as the full model)",
        "",
        "Each row removes one part of the full model; the change is the paired difference in "
        "test macro-AUC points against the full model on the same seeds (negative: the part "
        "helps), the last column the same against FedAvg (positive: the ablated model still "
        "beats FedAvg).",
        "",
        "| variant | seeds | test macro-AUC | change against the full model (mean, 95% CI) "
        "| verdict | against FedAvg (mean, 95% CI) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| full model | {len(full)} | {_mean_sd(list(full.values()))} | - | - "
        f"| {_interval(paired_gain(full, fedavg))} |",
    ]
    names = sorted({",".join(f"{k}={v}" for k, v in r["options"].items()) for r in ablations})
    for name in names:
        rows = [
            r for r in ablations if ",".join(f"{k}={v}" for k, v in r["options"].items()) == name
        ]
        gain = paired_gain(_by_seed(rows, _auc), full)
        verdict = "-" if gain is None else gain.verdict
        out.append(
            f"| {name} | {len(rows)} | {_mean_sd([_auc(r) for r in rows])} "
            f"| {_interval(gain)} | {verdict} "
            f"| {_interval(paired_gain(_by_seed(rows, _auc), fedavg))} |"
        )
    return out


def _interval(gain: PairedGain | None) -> str:
    if gain is None or math.isnan(gain.ci_low):
        return "-"
    return f"{100 * gain.mean:+.2f} [{100 * gain.ci_low:+.2f}, {100 * gain.ci_high:+.2f}]"


def _display_variant(run: Run) -> Run:
    """The run, its variant marked ``+tuned`` where it trained with tuned loss weights."""
    return {**run, "variant": run["variant"] + TUNED} if run.get("tuned") else run


def _long_table(runs: list[Run], main: list[Run], main_cap: int) -> list[str]:
    long = [r for r in runs if r.get("stage") == "long"]
    if not long:
        return []
    setting = long[0]["setting"]
    cap = int(long[0]["max_rounds"])
    base = [r for r in main if r["dataset"] == "digits" and r["setting"] == setting]
    fedavg = _by_seed(long, _auc)
    out = [
        f"### FedAvg with {cap} rounds against FedNCAlign-ML with the main cap (digits, "
        f"{SETTING_TITLES[setting].lower()})",
        "",
        f"A FedAvg run that reaches the main cap may still be improving, so here FedAvg gets a "
        f"cap of {cap} rounds (the same patience); FedNCAlign-ML's runs are the main table's. "
        f"{_long_cap_finding(long, cap, main_cap)}",
        "",
        "| run | seeds | test macro-AUC | selected round | rounds run "
        "| stopped by patience before the cap |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| FedAvg (prior bias), cap {cap} | {len(long)} | {_mean_sd(list(fedavg.values()))} "
        f"| {statistics.fmean(r['best']['round'] for r in long):.1f} "
        f"| {statistics.fmean(len(r['rounds']) for r in long):.1f} "
        f"| {sum(1 for r in long if r.get('converged'))} of {len(long)} |",
        "",
        "| comparison | per seed | mean | 95% CI | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        mine = _by_seed([r for r in base if r["variant"] == method], _auc)
        if mine:
            label = f"{NAMES[method]} − FedAvg (cap {cap})"
            out.append(_gain_row(label, paired_gain(mine, fedavg), detectable=False))
    return out


def _long_cap_finding(long: list[Run], cap: int, main_cap: int) -> str:
    """Say what the longer cap shows, from how many runs reached it."""
    reached = sum(1 for r in long if len(r["rounds"]) >= cap)
    ran = [len(r["rounds"]) for r in long]
    if reached:
        return (
            f"{reached} of {len(long)} runs reached the cap of {cap} and may still have been "
            f"improving; against the others, which patience stopped, a gain is not the cap's "
            f"doing."
        )
    within = f", within the main cap of {main_cap}" if main_cap and max(ran) <= main_cap else ""
    return (
        f"No run reached the cap of {cap}: patience stopped every one, after {min(ran)} to "
        f"{max(ran)} rounds{within}. So the longer cap changed nothing, and this table cannot "
        f"tell speed of convergence from accuracy: it shows that patience, not the cap, ended "
        f"FedAvg's runs. The equal-budget headline above gives FedAvg more patience."
    )


def _auc(run: Run) -> float:
    return float(run["best"]["macro_auc"])


def _width_table(runs: list[Run], main: list[Run], width: int) -> list[str]:
    """Each narrow-width variant against the main setting-1 runs of the same variant, the same
    loss weights (``+tuned`` on both sides or neither) and the same seeds."""
    narrow = [r for r in runs if r.get("stage") == "width"]
    if not narrow:
        return []
    out = [
        "### What the narrow backbone costs (digits, setting 1)",
        "",
        "| base width | method | seeds | test macro-AUC | seconds per round |",
        "| --- | --- | --- | --- | --- |",
    ]
    widths = sorted({r["width"] for r in narrow} | {width})
    variants = [v for v in NAMES if any(r["variant"] == v for r in narrow)]
    for w in widths:
        for variant in variants:
            if w == width:
                rows = [
                    r
                    for r in main
                    if r["dataset"] == "digits"
                    and r["setting"] == "s1"
                    and r["variant"] == variant
                    and r["seed"] in {x["seed"] for x in narrow}
                ]
            else:
                rows = [r for r in narrow if r["width"] == w and r["variant"] == variant]
            if not rows:
                continue
            per_round = statistics.fmean(r["seconds"] / len(r["rounds"]) for r in rows)
            out.append(
                f"| {w} | {NAMES[variant]} | {len(rows)} | {_mean_sd([_auc(r) for r in rows])} "
                f"| {per_round:.1f} |"
            )
    return out


def wall_time_line(results: dict[str, Any]) -> str:
    """Say how long the invocations that made ``results`` took on the clock (empty if unknown)."""
    invocations = results.get("invocations", [])
    if not invocations:
        return ""
    hours = sum(i["seconds"] for i in invocations) / 3600
    cells = sum(i.get("cells", 0) for i in invocations)
    parts = "; ".join(
        f"{i['started']}, {i['seconds'] / 3600:.2f} h, {i.get('cells', '?')} cells, "
        f"stages {i.get('stages', '?')}, {i.get('workers', '?')} workers"
        + (", interrupted" if i.get("interrupted") else "")
        for i in invocations
    )
    return (
        f"Wall time of the invocations recorded in the results file: {hours:.2f} h for {cells} "
        f"of these runs in {len(invocations)} invocation{'s' if len(invocations) > 1 else ''} "
        f"({parts})."
    )


def render_reference(
    results: dict[str, Any], equal_budget: dict[str, Any] | None = None
) -> list[str]:
    """Return the reference section of docs/benchmarks.md (empty without results).

    ``equal_budget`` (``reference_patience10.json``) gives the headline at an equal, longer
    budget (:func:`~benchmarks.equal_budget_report.render_equal_budget`), first.
    """
    from benchmarks.equal_budget_report import render_equal_budget

    runs = [_display_variant(r) for r in _ok(results.get("runs", []))]
    if not runs:
        return []
    settings = results.get("settings", {})
    choices = tuning_choices(runs)
    main = [r for r in runs if r.get("stage") == "main"]
    hours = sum(r["seconds"] for r in results.get("runs", [])) / 3600
    out = [
        "## Reference accuracy: trained until validation stops improving, 5 seeds, paired gains",
        "",
        f"`make bench-reference` (`python benchmarks/reference.py`): ResNet-18 at base width "
        f"{settings.get('width')} with the {settings.get('backbone', 'small')} stem, up to {settings.get('max_rounds')} rounds, "
        f"stopping once validation macro-AUC has not improved for {settings.get('patience')} "
        f"rounds (the last column of each table says how many runs patience stopped before "
        f"the cap); "
        f"the round with the best validation macro-AUC is reported. Every linear head but "
        f"FedAvg (zero bias)'s starts at the same prior bias as FedNCAlign-ML's classifier. "
        f"The runs below took "
        f"{hours:.2f} h of worker time ({len(results.get('runs', []))} runs). "
        f"{wall_time_line(results)}".rstrip(),
        "",
    ]
    raw_main = [r for r in _ok(results.get("runs", [])) if r.get("stage") == "main"]
    headline = render_equal_budget(
        equal_budget or {}, raw_main, choices.get(HEAD_CHOICE, {}).get("head_bias")
    )
    if headline:
        out += [*headline, ""]
    out += _tuning_tables(runs, choices)
    for dataset, title in DATASET_TITLES.items():
        if not any(r["dataset"] == dataset for r in main):
            continue
        out += ["", f"### {title}", ""]
        for setting in SETTING_TITLES:
            out += [*_main_tables(main, dataset, setting), ""]
    out += ["", *_diagnostics_table(main)]
    out += ["", *_long_table(runs, main, int(settings.get("max_rounds", 0)))]
    out += ["", *_ablation_table(runs, main)]
    out += ["", *_width_table(runs, main, int(settings.get("width", 16)))]
    return out
