"""``clinfl model export|predict|card``: turn a run into a model folder, apply it, describe it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from clinfl.cli.render import progress_bar
from clinfl.config.policy import load_policy
from clinfl.data.label_space import SPACE_NAMES
from clinfl.device import resolve_device
from clinfl.errors import ConfigError
from clinfl.model_io import export_run, read_bundle
from clinfl.model_io.bundle import write_file
from clinfl.model_io.card import build_card, card_format, render_card
from site_agent.ingest.pipeline import IngestOptions
from site_agent.prediction.run import PredictionRequest, PredictionResult, run_prediction
from site_agent.prediction.run import unused_path as unused_csv_path
from site_agent.setup import ingest_options


def export(
    run: Annotated[Path, typer.Option(help="A finished run folder (`clinfl simulate --out`).")],
    out: Annotated[Path, typer.Option(help="The model folder to write.")],
    etf_seed: Annotated[
        str,
        typer.Option(
            help="include: the folder carries the federation seed the ETF is rebuilt from; "
            "omit: it does not, and each site passes --federation-seed to `model predict`."
        ),
    ] = "include",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Write the run's selected model, config, thresholds and provenance to one folder."""
    with cli_errors(as_json=as_json):
        if etf_seed not in ("include", "omit"):
            raise ConfigError(
                f"--etf-seed must be include or omit, got {etf_seed!r}", remedy="--etf-seed include"
            )
        bundle = export_run(run, out, include_etf_seed=etf_seed == "include")
        flagged = [n for n, c in bundle.thresholds["classes"].items() if c["flagged"]]
        summary = {
            "model": str(out),
            "method": bundle.method.name,
            "label_space": bundle.label_space,
            "selected_round": bundle.provenance["selected_round"],
            "threshold_rule": bundle.thresholds["rule"],
            "flagged_classes": flagged,
            "etf_seed": "included" if bundle.federation_seed is not None else "omitted",
        }
        if as_json:
            print(json.dumps(summary, indent=2))
            return
        console = Console()
        console.print(
            f"exported round {summary['selected_round']} of {run} ({bundle.method.name}, "
            f"{bundle.label_space}, thresholds: {bundle.thresholds['rule']}) to {out}"
        )
        if flagged:
            console.print(f"kept at 0.5 (no validation positive): {', '.join(flagged)}")
        console.print(
            f"next: clinfl model predict --model {out} --data EXPORT_OR_PNG_DIR "
            f"--out predictions.csv   (clinfl model card --model {out} --out card.html)"
        )


def _ingest_options(policy: Path | None, workers: int, lenient: bool) -> IngestOptions:
    data = [load_policy(policy).data] if policy is not None else []
    return ingest_options(IngestOptions(lenient=lenient, workers=workers), data)


def _summary_tables(result: PredictionResult) -> list[Table]:
    found = Counter(name for row in result.positives for name in row)
    findings = Table(title=f"{len(result.keys)} images: positive findings at the thresholds")
    findings.add_column("finding")
    findings.add_column("threshold", justify="right")
    findings.add_column("images", justify="right")
    for name, threshold in zip(result.class_names, result.thresholds, strict=True):
        findings.add_row(name, f"{threshold:.3g}", str(found.get(name, 0)))
    tables = [findings]
    if result.unused:
        unused = Table(title=f"{len(result.unused)} files not used")
        unused.add_column("reason")
        unused.add_column("files", justify="right")
        for reason, count in sorted(Counter(u.reason for u in result.unused).items()):
            unused.add_row(reason, str(count))
        tables.append(unused)
    return tables


def predict(
    model: Annotated[Path, typer.Option(help="The model folder (`clinfl model export --out`).")],
    data: Annotated[Path, typer.Option(help="A DICOM export or a folder of PNG/JPEG images.")],
    out: Annotated[Path, typer.Option(help="Predictions file: .csv or .json (stays here).")],
    explain: Annotated[
        Path | None,
        typer.Option(
            help="Write LADM class-attention overlays (PNG) of each positive finding here "
            "(FedNCAlign-ML models only)."
        ),
    ] = None,
    source: Annotated[str, typer.Option("--format", help="auto, dicom or png.")] = "auto",
    state: Annotated[
        Path | None,
        typer.Option(
            help="Site state folder: the DICOM decode cache (default: temporary), and with "
            "--thresholds local the folder `clinfl site run` used."
        ),
    ] = None,
    thresholds: Annotated[
        str,
        typer.Option(
            help="model: the model folder's thresholds (chosen on the federation's validation "
            "data); local: this site's own, fitted on its validation studies of the model's "
            "run under the run's rule and kept in --state (nothing is sent)."
        ),
    ] = "model",
    policy: Annotated[
        Path | None, typer.Option(help="Site policy: its data.modalities/body_parts/views filter.")
    ] = None,
    label_space: Annotated[
        str | None,
        typer.Option(
            help="Refuse a model of another label space (cxr14, chexpert, digits, or custom "
            "with --label-column)."
        ),
    ] = None,
    label_column: Annotated[
        list[str] | None,
        typer.Option(
            help="--label-space custom: one class, in the model's output order (repeatable)."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="A label table of the data: refuse the model unless the table has a column "
            "for each of its classes (default: labels.csv at the top of --data, if any)."
        ),
    ] = None,
    federation_seed: Annotated[
        int | None,
        typer.Option(help="The federation seed, when the model folder does not carry it."),
    ] = None,
    workers: Annotated[int, typer.Option(help="DICOM decoding processes.")] = 2,
    lenient: Annotated[bool, typer.Option(help="Lenient DICOM reading. Default strict.")] = False,
    device: Annotated[str, typer.Option(help="cpu (default), auto, cuda or cuda:N.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON.")] = False,
) -> None:
    """Predict every usable image; write probabilities and positive findings per image."""
    console = Console(stderr=True)
    with cli_errors(as_json=as_json):
        if source not in ("auto", "dicom", "png"):
            raise ConfigError(f"--format must be auto, dicom or png, not {source!r}", remedy="")
        if label_space is not None and label_space not in SPACE_NAMES:
            raise ConfigError(
                f"--label-space must be one of {', '.join(SPACE_NAMES)}, got {label_space!r}",
                remedy="--label-space cxr14",
            )
        if workers < 1:
            raise ConfigError("--workers must be >= 1", remedy="--workers 2")
        request = PredictionRequest(
            model_dir=model,
            data_dir=data,
            out=out,
            explain_dir=explain,
            state_dir=state,
            source=source,  # type: ignore[arg-type]
            label_space=label_space,
            federation_seed=federation_seed,
            ingest=_ingest_options(policy, workers, lenient),
            label_columns=tuple(label_column or ()),
            labels=labels,
            thresholds=thresholds,  # type: ignore[arg-type]  # checked by run_prediction
        )
        bar = progress_bar(console)
        task = bar.add_task("reading", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        with bar:
            result = run_prediction(request, progress=progress, device=resolve_device(device))
        if as_json:
            print(json.dumps(result.to_json_dict(), indent=2))
            return
        if result.local is not None:
            local = result.local
            console.print(
                f"thresholds: this site's own ({local.rule}, fitted on {local.validation_studies} "
                f"validation studies with round {local.round} of run {local.run_id}; kept in "
                f"{state}, never sent)"
            )
        for table in _summary_tables(result):
            console.print(table)
        console.print(f"predictions: {out}")
        if result.unused and out.suffix.lower() == ".csv":
            console.print(f"files not used, with their reasons: {unused_csv_path(out)}")
        if explain is not None:
            console.print(f"{len(result.overlays)} attention overlays: {explain}")


def card(
    model: Annotated[Path, typer.Option(help="The model folder (`clinfl model export --out`).")],
    out: Annotated[Path, typer.Option(help="card.html, card.md or card.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Errors as JSON.")] = False,
) -> None:
    """Write the model card: provenance, per-class AUC with 95% CIs, thresholds, privacy."""
    with cli_errors(as_json=as_json):
        fmt = card_format(out)
        content = build_card(read_bundle(model))
        write_file(out.parent, out.name, render_card(content, fmt).encode())
        if as_json:
            print(json.dumps({"card": str(out), "format": fmt}))
            return
        Console().print(f"model card: {out}")
