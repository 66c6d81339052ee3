"""Render docs/benchmarks.md from the benchmarks' JSON results (accuracy and secure aggregation)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.ingest_report import render_ingest
from benchmarks.privacy_report import render_privacy
from benchmarks.secagg_report import render_secagg

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

NOTES = Path(__file__).resolve().parent / "accuracy_notes.md"
SECAGG_NOTES = Path(__file__).resolve().parent / "secagg_notes.md"
PRIVACY_NOTES = Path(__file__).resolve().parent / "privacy_notes.md"
INGEST_NOTES = Path(__file__).resolve().parent / "ingest_notes.md"
METRICS = ("macro_auc", "micro_auc", "macro_f1", "micro_f1")
LABELS = {
    "centralized": "Centralized",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedncalign": "FedNCAlign-ML",
    "fedncalign_no_rej": "FedNCAlign-ML without L_rej (ablation)",
}
DATASET_TITLES = {
    "digits": "Digits composites (sklearn digits, 10 labels, 16 px)",
    "nih1000": "NIH1000 (real ChestX-ray14, 14 labels, 64 px, official split)",
}
# METHOD.md section 8, in %: (macro-AUC, macro-F1, micro-AUC, micro-F1); None where not reported.
PAPER: dict[str, tuple[str, dict[str, tuple[float | None, ...]]]] = {
    "digits": (
        "ML-CIFAR-10, setting 1",
        {
            "centralized": (91.17, 61.40, 91.04, 62.22),
            "fedavg": (82.46, 40.65, 81.83, 41.24),
            "fedncalign": (87.72, 49.22, 87.13, 49.60),
        },
    ),
    "nih1000": (
        "ChestX-ray14, setting 2",
        {
            "centralized": (71.44, None, 79.62, None),
            "fedavg": (69.84, None, 78.00, None),
            "fedncalign": (71.33, None, 78.10, None),
        },
    ),
}


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return 100 * mean, 100 * std


def _cell(values: list[float]) -> str:
    mean, std = _stats(values)
    return f"{mean:.2f} ± {std:.2f}"


def _by_method(runs: list[dict[str, Any]], dataset: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["dataset"] == dataset:
            grouped.setdefault(run["method"], []).append(run)
    return grouped


def _accuracy_table(grouped: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| method | seeds | macro-AUC | micro-AUC | macro-F1 | micro-F1 | selected rounds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in LABELS:
        runs = grouped.get(method)
        if not runs:
            continue
        cells = [_cell([r["best"][m] for r in runs]) for m in METRICS]
        rounds = ", ".join(str(r["best"]["round"]) for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(f"| {LABELS[method]} | {len(runs)} | " + " | ".join(cells) + f" | {rounds} |")
    return lines


def _gain_lines(dataset: str, grouped: dict[str, list[dict[str, Any]]]) -> list[str]:
    if "fedavg" not in grouped or "fedncalign" not in grouped:
        return []
    title, paper = PAPER[dataset]
    lines = [
        f"Gain of FedNCAlign-ML over FedAvg (points), here and in the paper ({title}):",
        "",
        "| metric | here (mean of seeds) | per seed | paper |",
        "| --- | --- | --- | --- |",
    ]
    paper_index = {"macro_auc": 0, "macro_f1": 1, "micro_auc": 2, "micro_f1": 3}
    by_seed = {r["seed"]: r for r in grouped["fedavg"]}
    for metric in METRICS:
        ours = [
            100 * (r["best"][metric] - by_seed[r["seed"]]["best"][metric])
            for r in grouped["fedncalign"]
            if r["seed"] in by_seed
        ]
        if not ours:
            continue
        p_nc = paper["fedncalign"][paper_index[metric]]
        p_avg = paper["fedavg"][paper_index[metric]]
        paper_gain = "-" if p_nc is None or p_avg is None else f"{p_nc - p_avg:+.2f}"
        seeds = ", ".join(f"{g:+.2f}" for g in ours)
        lines.append(f"| {metric} | {statistics.fmean(ours):+.2f} | {seeds} | {paper_gain} |")
    return lines


def _paper_table(dataset: str) -> list[str]:
    title, paper = PAPER[dataset]
    lines = [
        f"The paper's table for the closest setting ({title}, in %):",
        "",
        "| method | macro-AUC | macro-F1 | micro-AUC | micro-F1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, values in paper.items():
        cells = ["-" if v is None else f"{v:.2f}" for v in values]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return lines


def _setup_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for dataset in DATASET_TITLES:
        sample = next(
            (r for r in runs if r["dataset"] == dataset and r["method"] == "fedncalign"), None
        )
        if sample is None:
            continue
        cfg = sample["config"]
        fed, data, method = cfg["federation"], cfg["data"], cfg["method"]
        lines.append(
            f"- {dataset}: {sample['data']}. K={fed['sites']} sites, alpha={data['alpha']}, "
            f"rho={data['rho']}, {fed['rounds']} rounds of E={fed['local_epochs']} local epoch, "
            f"batch {fed['batch_size']}, AdamW lr {fed['lr']} (weight decay {fed['weight_decay']}), "
            f"ResNet-18 ({method['backbone']} stem, {method['norm']} norm) from scratch, "
            f"lambda_rej={method['lambda_rej']}, lambda_con={method['lambda_con']}. "
            f"Dropped by the partition: {sample['partition']['dropped']} training samples."
        )
    return lines


def _throughput_lines(throughput: list[dict[str, Any]]) -> list[str]:
    if not throughput:
        return []
    lines = [
        "## Local training step throughput",
        "",
        "One AdamW step of each method's local loss (forward, backward, update) on a batch of "
        "32, median of 8 timed steps after 2 warm-up steps.",
        "",
        "| data set | method | image size | images/s | ms/step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in throughput:
        lines.append(
            f"| {row['dataset']} | {LABELS.get(row['method'], row['method'])} | {row['image_size']} | "
            f"{row['images_per_second']:.1f} | {1000 * row['median_step_seconds']:.0f} |"
        )
    return lines


def write_docs(docs: Path = DOCS, results_dir: Path = RESULTS_DIR) -> None:
    """Regenerate ``docs`` from every results file present in ``results_dir``."""

    def load(name: str) -> dict[str, Any]:
        path = results_dir / name
        loaded: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        return loaded

    docs.write_text(
        render_report(
            load("accuracy.json"),
            secagg=load("secagg.json"),
            privacy=load("privacy.json"),
            ingest=load("ingest.json"),
        )
    )


def render_report(
    results: dict[str, Any],
    *,
    secagg: dict[str, Any] | None = None,
    privacy: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
) -> str:
    """Return the Markdown report for ``results`` (accuracy) and ``secagg`` (secure aggregation)."""
    runs = results.get("runs", [])
    machine = results.get("machine", {})
    out = [
        "# Benchmarks",
        "",
        "Generated by the scripts in `benchmarks/` (`make bench`) from "
        "`benchmarks/results/*.json`; every number below was measured by those scripts. "
        "Do not edit by hand: rerun them (or `python benchmarks/accuracy.py --render-only` after "
        "editing the notes in `benchmarks/accuracy_notes.md`).",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch "
        f"{machine.get('torch', '?')}, {machine.get('torch_threads', '?')} threads, CUDA "
        f"{'yes' if machine.get('cuda') else 'no'}.",
        "",
        "## Accuracy under label skew",
        "",
        "Metrics of the global model on the held-out test set at the round selected on validation "
        "macro-AUC, in %, mean ± standard deviation over seeds. Centralized = all training data "
        "at one site (FedAvg's model and loss, no skew).",
        "",
        *_setup_lines(runs),
    ]
    for dataset, title in DATASET_TITLES.items():
        grouped = _by_method(runs, dataset)
        if not grouped:
            continue
        out += ["", f"### {title}", "", *_accuracy_table(grouped), ""]
        out += [*_gain_lines(dataset, grouped), "", *_paper_table(dataset)]
    out += ["", *_throughput_lines(results.get("throughput", []))]
    if NOTES.is_file():
        out += ["", NOTES.read_text().strip()]
    out += ["", *render_secagg(secagg or {})]
    if SECAGG_NOTES.is_file() and secagg:
        out += ["", SECAGG_NOTES.read_text().strip()]
    out += ["", *render_privacy(privacy or {})]
    if PRIVACY_NOTES.is_file() and privacy:
        out += ["", PRIVACY_NOTES.read_text().strip()]
    out += ["", *render_ingest(ingest or {})]
    if INGEST_NOTES.is_file() and ingest:
        out += ["", INGEST_NOTES.read_text().strip()]
    return "\n".join(out).rstrip() + "\n"
