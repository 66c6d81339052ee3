"""Render docs/benchmarks.md (and its figures) from every benchmark's JSON results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.accuracy_report import (
    LABELS,
    render_accelerator,
    render_accuracy,
    render_fedcurv_lambda,
)
from benchmarks.ingest_report import render_ingest
from benchmarks.plots import draw_all
from benchmarks.privacy_report import render_privacy
from benchmarks.privacy_utility_report import draw_privacy_utility, render_privacy_utility
from benchmarks.reference_report import render_reference
from benchmarks.secagg_report import render_secagg
from benchmarks.stem_report import render_stem_comparison
from benchmarks.training_latency_report import render_training_latency
from benchmarks.xray_report import render_xray

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

NOTES = Path(__file__).resolve().parent / "accuracy_notes.md"
SECAGG_NOTES = Path(__file__).resolve().parent / "secagg_notes.md"
PRIVACY_NOTES = Path(__file__).resolve().parent / "privacy_notes.md"
REFERENCE_NOTES = Path(__file__).resolve().parent / "reference_notes.md"
INGEST_NOTES = Path(__file__).resolve().parent / "ingest_notes.md"
FIGURES_DIR = "benchmarks"  # docs/benchmarks/*.png


def _throughput_lines(throughput: list[dict[str, Any]]) -> list[str]:
    if not throughput:
        return []
    lines = [
        "## Local training step throughput",
        "",
        "One AdamW step of each method's local loss (forward, backward, update) on a batch of "
        "32, median of 8 timed steps after 2 warm-up steps, at the accuracy preset's image sizes.",
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


def _run_all_lines(record: dict[str, Any]) -> list[str]:
    """One line on how long the last ``run_all.py`` took, script by script, and how each ended."""
    scripts = record.get("scripts", [])
    if not scripts:
        return []
    parts = ", ".join(
        f"`{s['script']}` {s['seconds'] / 60:.1f} min (exit {s['exit_code']})" for s in scripts
    )
    return [
        f"The last `run_all.py --{record.get('preset', 'quick')}` took "
        f"{record.get('seconds', 0) / 60:.1f} min in all: {parts}.",
        "",
    ]


def _machine_line(name: str, results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    return (
        f"| {name} | {results.get('preset', '-')} | {machine.get('cpu', '?')} | "
        f"{machine.get('cores', '?')} | {machine.get('torch', '?')} | "
        f"{machine.get('torch_threads', '?')} | {machine.get('cuda_device') or 'none'} |"
    )


def write_docs(docs: Path = DOCS, results_dir: Path = RESULTS_DIR) -> None:
    """Regenerate ``docs`` from every results file present in ``results_dir``."""

    def load(name: str) -> dict[str, Any]:
        path = results_dir / name
        loaded: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        return loaded

    accuracy, secagg, privacy = load("accuracy.json"), load("secagg.json"), load("privacy.json")
    plots = draw_all(docs.parent / FIGURES_DIR, accuracy=accuracy, privacy=privacy, secagg=secagg)
    privacy_utility = load("privacy_utility.json")
    if draw_privacy_utility(privacy_utility, docs.parent / FIGURES_DIR / "privacy-utility.png"):
        plots["privacy-utility"] = f"{FIGURES_DIR}/privacy-utility.png"
    docs.write_text(
        render_report(
            accuracy,
            secagg=secagg,
            privacy=privacy,
            ingest=load("ingest.json"),
            plots=plots,
            accelerator=load("accuracy-accelerator.json"),
            fedcurv_lambda=load("fedcurv_lambda.json"),
            run_all=load("run_all.json"),
            reference=load("reference.json"),
            small_stem=load("reference_small_stem.json"),
            equal_budget=load("reference_patience10.json"),
            training_latency=load("training_latency.json"),
            xray=load("xray.json"),
            privacy_utility=privacy_utility,
        )
    )


def render_report(
    results: dict[str, Any],
    *,
    secagg: dict[str, Any] | None = None,
    privacy: dict[str, Any] | None = None,
    ingest: dict[str, Any] | None = None,
    plots: dict[str, str] | None = None,
    accelerator: dict[str, Any] | None = None,
    fedcurv_lambda: dict[str, Any] | None = None,
    run_all: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    small_stem: dict[str, Any] | None = None,
    training_latency: dict[str, Any] | None = None,
    equal_budget: dict[str, Any] | None = None,
    xray: dict[str, Any] | None = None,
    privacy_utility: dict[str, Any] | None = None,
) -> str:
    """Return the Markdown report: accuracy (``results``, then ``accelerator``), secure
    aggregation, privacy, training latency, ingestion."""
    plots = plots or {}
    sources = [
        ("accuracy", results),
        ("accuracy (accelerator)", accelerator or {}),
        ("X-rays by patient", xray or {}),
        ("reference accuracy", reference or {}),
        ("secure aggregation", secagg or {}),
        ("privacy", privacy or {}),
        ("privacy against utility", privacy_utility or {}),
        ("training latency", training_latency or {}),
        ("ingestion", ingest or {}),
    ]
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python benchmarks/run_all.py --quick`; `make bench-full` "
        "for the full presets) from `benchmarks/results/*.json`: every number and figure below "
        "was measured by those scripts in the run that wrote the JSON. Do not edit by hand: "
        "rerun them (or `python benchmarks/accuracy.py --render-only` after editing the notes "
        "in `benchmarks/*_notes.md`).",
        "",
        "Where each section's numbers were measured:",
        "",
        "| section | preset | CPU | cores | torch | torch threads | CUDA device |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[_machine_line(name, data) for name, data in sources if data],
        "",
        *_run_all_lines(run_all or {}),
    ]
    xray_lines = render_xray(xray or {})
    if xray_lines:
        out += [*xray_lines, ""]
    reference_lines = render_reference(reference or {}, equal_budget or {})
    if reference_lines:
        out += [*reference_lines, ""]
        stem_lines = render_stem_comparison(reference or {}, small_stem or {})
        if stem_lines:
            out += [*stem_lines, ""]
        if REFERENCE_NOTES.is_file():
            out += [REFERENCE_NOTES.read_text().strip(), ""]
    out += render_accuracy(results, plots)
    out += ["", *_throughput_lines(results.get("throughput", []))]
    out += ["", *render_fedcurv_lambda(fedcurv_lambda or {})]
    if NOTES.is_file() and results.get("runs"):
        out += ["", NOTES.read_text().strip()]
    out += ["", *render_accelerator(accelerator or {})]
    out += ["", *render_secagg(secagg or {})]
    if "secagg" in plots:
        out += ["", f"![secure aggregation cost against sites]({plots['secagg']})"]
    if SECAGG_NOTES.is_file() and secagg:
        out += ["", SECAGG_NOTES.read_text().strip()]
    out += ["", *render_privacy_utility(privacy_utility or {}, plots.get("privacy-utility"))]
    out += ["", *render_privacy(privacy or {})]
    if "epsilon" in plots:
        out += ["", f"![epsilon against rounds]({plots['epsilon']})"]
    if PRIVACY_NOTES.is_file() and privacy:
        out += ["", PRIVACY_NOTES.read_text().strip()]
    out += ["", *render_training_latency(training_latency or {})]
    out += ["", *render_ingest(ingest or {})]
    if INGEST_NOTES.is_file() and ingest:
        out += ["", INGEST_NOTES.read_text().strip()]
    return "\n".join(out).rstrip() + "\n"
