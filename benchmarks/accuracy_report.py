"""The accuracy section of docs/benchmarks.md, from benchmarks/results/accuracy.json."""

from __future__ import annotations

import statistics
from typing import Any

METRICS = ("macro_auc", "micro_auc", "macro_f1", "micro_f1")
LABELS = {
    "centralized": "Centralized",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "scaffold": "SCAFFOLD",
    "fedcurv": "FedCurv",
    "spherefed": "SphereFed",
    "fedncalign": "FedNCAlign-ML",
}
ABLATION_LABELS = {
    "fedncalign": "FedNCAlign-ML (all parts)",
    "no_etf": "learnable classifier instead of the fixed ETF",
    "no_ladm": "no LADM (pooled feature for every class)",
    "learnable_queries": "learnable LADM queries instead of the ETF",
    "no_rej": "no L_rej",
    "no_con": "no L_con",
}
COMPONENT_ABLATIONS = ("fedncalign", "no_etf", "no_ladm", "learnable_queries")
LOSS_ABLATIONS = ("fedncalign", "no_rej", "no_con")
DATASET_TITLES = {
    "digits": "Digits composites (sklearn digits, 10 labels)",
    "nih1000": "NIH1000 (real ChestX-ray14, 14 labels, official split: its test set is 310 images "
    "of only 15 patients, so these figures cannot compare methods; see the cross-validated X-ray "
    "table)",
}
SETTING_TITLES = {
    "s1": "setting 1 (alpha 0.5, rho 0.5)",
    "s2": "setting 2 (alpha 0.1, rho 0.3)",
}
# METHOD.md section 8, in %: (macro-AUC, macro-F1, micro-AUC, micro-F1); None where not reported.
PAPER_TABLES: dict[str, dict[str, tuple[float | None, ...]]] = {
    "ML-CIFAR-10, setting 1": {
        "centralized": (91.17, 61.40, 91.04, 62.22),
        "fedavg": (82.46, 40.65, 81.83, 41.24),
        "fedncalign": (87.72, 49.22, 87.13, 49.60),
    },
    "ML-DermaMNIST, setting 2": {
        "centralized": (91.86, 63.49, 94.52, 73.30),
        "fedavg": (83.95, 40.69, 86.68, 63.03),
        "fedncalign": (87.69, 51.38, 90.36, 63.26),
    },
    "ChestX-ray14, setting 2": {
        "centralized": (71.44, None, 79.62, None),
        "fedavg": (69.84, None, 78.00, None),
        "fedncalign": (71.33, None, 78.10, None),
    },
}
CLOSEST_PAPER = {
    ("digits", "s1"): "ML-CIFAR-10, setting 1",
    ("digits", "s2"): "ML-DermaMNIST, setting 2",
    ("nih1000", "s1"): "ChestX-ray14, setting 2",
    ("nih1000", "s2"): "ChestX-ray14, setting 2",
}
PAPER_INDEX = {"macro_auc": 0, "macro_f1": 1, "micro_auc": 2, "micro_f1": 3}


def cell(values: list[float]) -> str:
    """Return ``mean ± std`` in % (std 0 for one value)."""
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}"


def select(
    runs: list[dict[str, Any]], dataset: str, setting: str
) -> dict[str, list[dict[str, Any]]]:
    """Group the successful, non-ablation runs of one data set and setting by method.

    Runs without a ``setting`` (results written before settings existed) are left out.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["dataset"] != dataset or "error" in run or run.get("ablation"):
            continue
        if "setting" not in run:
            continue
        if run["setting"] == setting or run["method"] == "centralized":
            grouped.setdefault(run["method"], []).append(run)
    return grouped


def select_ablations(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group the digits setting-1 ablation runs, with the full method on the same seeds."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        wanted = run["dataset"] == "digits" and run.get("setting") == "s1"
        if wanted and run.get("ablation") and "error" not in run:
            grouped.setdefault(run["ablation"], []).append(run)
    seeds = {r["seed"] for group in grouped.values() for r in group}
    full = [r for r in select(runs, "digits", "s1").get("fedncalign", []) if r["seed"] in seeds]
    if full:
        grouped["fedncalign"] = full
    return grouped


THRESHOLDED = ("macro_f1_at_thresholds", "micro_f1_at_thresholds")


def _thresholded_cell(group: list[dict[str, Any]], metric: str) -> str:
    """F1 at the validation-chosen thresholds; runs from older results lack it."""
    values = [r["best"][metric] for r in group if r["best"].get(metric) is not None]
    if not values:
        return "-"
    partial = f" ({len(values)} of {len(group)} seeds)" if len(values) < len(group) else ""
    return cell(values) + partial


def _table(grouped: dict[str, list[dict[str, Any]]], order: dict[str, str]) -> list[str]:
    thresholded = any(
        r["best"].get(THRESHOLDED[0]) is not None for group in grouped.values() for r in group
    )
    extra = " macro-F1 @thr | micro-F1 @thr |" if thresholded else ""
    lines = [
        "| method | seeds | macro-AUC | micro-AUC | macro-F1 | micro-F1 |"
        + extra
        + " selected rounds |",
        "| --- | --- | --- | --- | --- | --- |" + " --- |" * (3 if thresholded else 1),
    ]
    for name, label in order.items():
        group = grouped.get(name)
        if not group:
            continue
        cells = [cell([r["best"][m] for r in group]) for m in METRICS]
        if thresholded:
            cells += [_thresholded_cell(group, m) for m in THRESHOLDED]
        rounds = ", ".join(str(r["best"]["round"]) for r in sorted(group, key=lambda r: r["seed"]))
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + f" | {rounds} |")
    return lines


def _paper_lines(title: str) -> list[str]:
    lines = [
        f"The paper, {title} (in %):",
        "",
        "| method | macro-AUC | micro-AUC | macro-F1 | micro-F1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, values in PAPER_TABLES[title].items():
        ordered = [values[PAPER_INDEX[m]] for m in METRICS]
        cells = ["-" if v is None else f"{v:.2f}" for v in ordered]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return lines


def gains(grouped: dict[str, list[dict[str, Any]]], title: str) -> list[str]:
    """Return the table of FedNCAlign-ML's gain over FedAvg, per seed, next to the paper's."""
    if "fedavg" not in grouped or "fedncalign" not in grouped:
        return []
    paper = PAPER_TABLES[title]
    lines = [
        "Gain of FedNCAlign-ML over FedAvg (points):",
        "",
        "| metric | here (mean of seeds) | per seed | paper |",
        "| --- | --- | --- | --- |",
    ]
    by_seed = {r["seed"]: r for r in grouped["fedavg"]}
    for metric in METRICS:
        ours = [
            100 * (r["best"][metric] - by_seed[r["seed"]]["best"][metric])
            for r in grouped["fedncalign"]
            if r["seed"] in by_seed
        ]
        if not ours:
            continue
        p_nc = paper["fedncalign"][PAPER_INDEX[metric]]
        p_avg = paper["fedavg"][PAPER_INDEX[metric]]
        paper_gain = "-" if p_nc is None or p_avg is None else f"{p_nc - p_avg:+.2f}"
        seeds = ", ".join(f"{g:+.2f}" for g in ours)
        lines.append(f"| {metric} | {statistics.fmean(ours):+.2f} | {seeds} | {paper_gain} |")
    return lines


def _setup(runs: list[dict[str, Any]], dataset: str) -> str:
    sample = next(
        (
            r
            for r in runs
            if r["dataset"] == dataset and "config" in r and r["method"] == "fedncalign"
        ),
        None,
    )
    if sample is None:
        return ""
    cfg = sample["config"]
    fed, data, method = cfg["federation"], cfg["data"], cfg["method"]
    return (
        f"Setup: {sample['data']}. K={fed['sites']} sites, {fed['rounds']} rounds of "
        f"E={fed['local_epochs']} local epoch, batch {fed['batch_size']}, AdamW lr {fed['lr']} "
        f"(weight decay {fed['weight_decay']}), ResNet-18 ({method['backbone']} stem, "
        f"{method['norm']} norm) from scratch, {data['image_size']} px, secure aggregation on."
    )


def render_accuracy(
    results: dict[str, Any], plots: dict[str, str], *, heading: str = "Accuracy under label skew"
) -> list[str]:
    """Return the Markdown lines of the accuracy section (``plots``: name -> relative path)."""
    runs = results.get("runs", [])
    if not runs:
        return []
    machine = results.get("machine", {})
    minutes = results.get("cells_seconds", 0) / 60
    out = [
        f"## {heading}",
        "",
        f"Generated by `python benchmarks/accuracy.py --{results.get('preset', 'quick')}` "
        f"({len(runs)} runs on {results.get('workers', 1)} worker processes of "
        f"{machine.get('torch_threads', '?')} torch thread(s), {minutes:.0f} min; machine: "
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch "
        f"{machine.get('torch', '?')}; device: {results.get('device', 'cpu')}). Metrics of the global model on the held-out test set "
        "at the round selected on validation macro-AUC, in %, mean ± standard deviation over "
        "seeds. F1 is taken at 0.5 and, where the results carry it (@thr), at per-class "
        "thresholds chosen on validation (never on test). Centralized = all training data at one site (FedAvg's model and loss, no skew; "
        "the same runs appear under both settings).",
    ]
    for dataset, title in DATASET_TITLES.items():
        if not any(r["dataset"] == dataset for r in runs):
            continue
        out += ["", f"### {title}", "", _setup(runs, dataset)]
        for setting, setting_title in SETTING_TITLES.items():
            grouped = select(runs, dataset, setting)
            if not grouped:
                continue
            paper = CLOSEST_PAPER[(dataset, setting)]
            out += ["", f"#### {setting_title}", "", *_table(grouped, LABELS), ""]
            out += [*_paper_lines(paper), "", *gains(grouped, paper)]
        if f"curves-{dataset}" in plots:
            out += ["", f"![per-round test macro-AUC, {dataset}]({plots[f'curves-{dataset}']})"]
        if f"partition-{dataset}" in plots:
            out += [
                "",
                f"![site-by-class training counts, {dataset}]({plots[f'partition-{dataset}']})",
            ]
    ablations = select_ablations(runs)
    if len(ablations) > 1:
        out += [
            "",
            "### Ablations (digits, setting 1)",
            "",
            "The paper's two ablation tables: the parts of the model, then the loss terms. "
            "Each row changes one switch of FedNCAlign-ML and keeps the rest.",
            "",
            *_table(ablations, {k: ABLATION_LABELS[k] for k in COMPONENT_ABLATIONS}),
            "",
            *_table(ablations, {k: ABLATION_LABELS[k] for k in LOSS_ABLATIONS}),
        ]
    failed = [r for r in runs if "error" in r]
    if failed:
        out += ["", "Runs that failed (kept out of the tables):", ""]
        out += [f"- {r['key']}: {r['error']}" for r in failed]
    return out


def render_accelerator(results: dict[str, Any]) -> list[str]:
    """Return the accelerator section: its tables with the device named, or why there are none."""
    if results.get("runs"):
        device = results.get("device", "an accelerator")
        return render_accuracy(results, {}, heading=f"Accuracy on an accelerator: {device}")
    return [
        "## Accuracy on an accelerator",
        "",
        "Not run: the machine that generated this report had no CUDA device. Where torch sees "
        "one, `make bench` (and `make bench-full`) also runs `python benchmarks/accuracy.py "
        "--accelerator` (every digits composite at 32 px, NIH1000 at 64 px, 20 rounds, one "
        "worker on the GPU) and its tables appear here with the device named. The CPU tables "
        "above stay the reference.",
    ]


def render_fedcurv_lambda(document: dict[str, Any]) -> list[str]:
    """Return the table of FedCurv's lambda grid, chosen on validation (``fedcurv_lambda.py``)."""
    runs = document.get("runs", [])
    if not runs:
        return []
    by_value: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        by_value.setdefault(run["lambda"], []).append(run)
    lines = [
        "### FedCurv's lambda, chosen on validation",
        "",
        "`python benchmarks/fedcurv_lambda.py`: FedCurv on the quick digits cells of setting 1, "
        f"seeds {', '.join(str(s) for s in sorted({r['seed'] for r in runs}))}, for each lambda; "
        "the default is the lambda with the highest mean validation macro-AUC. Test macro-AUC "
        "is shown, and played no part in the choice.",
        "",
        "| lambda | validation macro-AUC | test macro-AUC | chosen |",
        "| --- | --- | --- | --- |",
    ]
    for value in sorted(by_value):
        group = by_value[value]
        chosen = "yes" if value == document.get("chosen") else ""
        lines.append(
            f"| {value:g} | {cell([r['val_macro_auc'] for r in group])} | "
            f"{cell([r['test_macro_auc'] for r in group])} | {chosen} |"
        )
    return lines
