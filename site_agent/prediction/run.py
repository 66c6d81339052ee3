"""``clinfl model predict`` at a site: read, predict, threshold, explain, write locally.

The output (a CSV or JSON file, and overlays) stays at the site: it names DICOM images by their
SOP Instance UID so that they can be found in the PACS. Nothing else written (the ingest index
and cache under the state folder) holds a UID.

A model refuses data of another label space: a label space the request declares must be the
model's (name and classes in order), and a label table that comes with the data (``labels``,
or a ``labels.csv`` at the top of the data folder) must hold a column for each of the model's
classes (or ``Finding Labels`` names among them). Labels are only checked, never used.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from clinfl.data.chestxray14 import read_label_table
from clinfl.data.label_space import resolve_label_space, space_difference
from clinfl.data.label_table import table_targets
from clinfl.errors import CheckpointError, ConfigError, LabelError
from clinfl.files import write_atomically, write_json
from clinfl.model_io import ModelBundle, read_bundle, resolve_seed
from site_agent.audit_report import write_site_report
from site_agent.ingest.labels import find_label_table
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ledger import LEDGER_FILE
from site_agent.local_thresholds import LocalThresholds, local_thresholds_for
from site_agent.prediction.explain import Overlay, require_class_attention, write_overlays
from site_agent.prediction.infer import positive_findings, probabilities
from site_agent.prediction.model import load_bundle_model
from site_agent.prediction.sources import (
    PredictionInput,
    SourceKind,
    Unused,
    detect_kind,
    read_dicom_export,
    read_native_grayscale,
    read_png_folder,
)

Progress = Callable[[str, int, int], None]
ThresholdSource = Literal["model", "local"]
THRESHOLD_SOURCES: tuple[ThresholdSource, ...] = ("model", "local")
OUTPUT_SUFFIXES = (".csv", ".json")
WRITABLE_OUT = "choose a writable --out path"


@dataclass(frozen=True)
class PredictionRequest:
    """What to predict on and where to write. ``state_dir`` None: a temporary folder.

    ``label_space`` (with ``label_columns`` for ``custom``), when given, is the label space the
    caller expects the model to predict; ``labels`` a label table of the data (default: a
    ``labels.csv`` at the top of ``data_dir``, if there is one). Both are only checked.
    ``thresholds``: ``model``, the model folder's; ``local``, this site's own, fitted on its
    validation studies of the model's run (:mod:`site_agent.local_thresholds`; ``state_dir``
    must be the site's state folder).
    """

    model_dir: Path
    data_dir: Path
    out: Path
    explain_dir: Path | None = None
    state_dir: Path | None = None
    source: SourceKind = "auto"
    label_space: str | None = None
    federation_seed: int | None = None
    ingest: IngestOptions = field(default_factory=IngestOptions)
    label_columns: tuple[str, ...] = ()
    labels: Path | None = None
    thresholds: ThresholdSource = "model"


@dataclass(frozen=True)
class PredictionResult:
    """One row per image: key, probabilities ``[N, C]``, positives; plus the unused files."""

    kind: str
    method: str
    class_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    keys: tuple[str, ...]
    probabilities: np.ndarray
    positives: list[tuple[str, ...]]
    unused: tuple[Unused, ...]
    overlays: tuple[Overlay, ...]
    out: Path
    local: LocalThresholds | None = None  # the site's own thresholds, when they were used

    def threshold_source(self) -> dict[str, Any]:
        """Where the thresholds came from: the model folder, or this site's validation studies."""
        if self.local is None:
            return {"kind": "model"}
        return {
            "kind": "local",
            "rule": self.local.rule,
            "run_id": self.local.run_id,
            "round": self.local.round,
            "validation_studies": self.local.validation_studies,
            "fitted_at": self.local.fitted_at,
        }

    def rows(self) -> list[dict[str, Any]]:
        """Return one JSON-ready row per image (probabilities by class name)."""
        return [
            {
                "key": key,
                "probabilities": dict(zip(self.class_names, map(float, probs), strict=True)),
                "positive": list(found),
            }
            for key, probs, found in zip(self.keys, self.probabilities, self.positives, strict=True)
        ]

    def to_json_dict(self) -> dict[str, Any]:
        """Return the whole result as JSON types (``--json`` prints it; a .json output holds it)."""
        return {
            "source": self.kind,
            "method": self.method,
            "classes": list(self.class_names),
            "thresholds": dict(zip(self.class_names, self.thresholds, strict=True)),
            "threshold_source": self.threshold_source(),
            "images": len(self.keys),
            "predictions": self.rows(),
            "unused": [vars(item) for item in self.unused],
            "overlays": [
                {"key": o.key, "finding": o.finding, "file": str(o.path)} for o in self.overlays
            ],
            "output": str(self.out),
        }


@contextmanager
def _state_folder(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="clinfl-predict-") as temporary:
        yield Path(temporary)


def _check_request(request: PredictionRequest) -> None:
    if request.out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(
            f"--out {request.out} must end in .csv or .json", remedy="--out predictions.csv"
        )
    if request.thresholds not in THRESHOLD_SOURCES:
        raise ConfigError(
            f"--thresholds must be model or local, got {request.thresholds!r}",
            remedy="--thresholds local (this site's own) or leave it out (the model folder's)",
        )
    if request.thresholds == "local" and request.state_dir is None:
        raise ConfigError(
            "--thresholds local needs the site's state folder, to fit them on its validation "
            "studies",
            remedy="add --state SITE_STATE (the folder `clinfl site run` used)",
        )


def _read(request: PredictionRequest, size: int, progress: Progress | None) -> PredictionInput:
    kind = detect_kind(request.data_dir) if request.source == "auto" else request.source
    if kind == "png":
        return read_png_folder(request.data_dir, size=size, progress=progress)
    options = IngestOptions(
        image_size=size,
        lenient=request.ingest.lenient,
        modalities=request.ingest.modalities,
        body_parts=request.ingest.body_parts,
        views=request.ingest.views,
        workers=request.ingest.workers,
    )
    with _state_folder(request.state_dir) as state:
        return read_dicom_export(
            request.data_dir, state_dir=state, options=options, progress=progress
        )


def check_label_space(request: PredictionRequest, bundle: ModelBundle) -> None:
    """Refuse data of another label space than the model's (see the module docstring).

    Raises:
        ConfigError: if the declared label space is not the model's (naming the difference).
        ValidationError: for a declared label space that is itself invalid.
        LabelError: if the data's label table does not fit the model's label space.
        DataError: if a given label table cannot be read.
    """
    if request.label_space is not None:
        declared = resolve_label_space(request.label_space, request.label_columns)
        difference = space_difference(bundle.space, declared)
        if difference is not None:
            raise ConfigError(
                f"the model folder predicts the {bundle.label_space!r} label space, not "
                f"{declared.describe()}: {difference}",
                remedy=f"use a model trained on {request.label_space!r}, or leave out "
                "--label-space",
            )
    table = request.labels
    if table is None and request.data_dir.is_dir():
        table = find_label_table(request.data_dir, None)
    if table is None:
        return
    header, rows = read_label_table(table)
    try:
        table_targets(header, rows, bundle.space, source=f"the data's label table {table.name}")
    except LabelError as error:
        raise LabelError(
            f"the model refuses this data: {error.message}",
            remedy="predict with a model trained on the data's label space (`clinfl model "
            "card` lists a model's classes), or leave the label table out of the data",
        ) from None


def run_prediction(
    request: PredictionRequest,
    *,
    progress: Progress | None = None,
    device: torch.device | None = None,
) -> PredictionResult:
    """Predict on every usable image of ``request.data_dir`` and write the output file.

    Raises:
        ModelError: for a missing or corrupt model folder, or weights that do not fit it.
        ConfigError: for a label space other than the model's, a missing federation seed,
            ``--explain`` with a model without class attention, a bad ``--out`` suffix, or
            local thresholds without a state folder.
        LabelError: for a label table of the data that does not fit the model's label space.
        DataError: for a missing data folder, or one with no usable image; local thresholds
            when the site's export changed or left no validation study.
        ModelError: local thresholds when the state holds no record of the model's run.
        CheckpointError: if the output (or the local thresholds) cannot be written.
    """
    _check_request(request)
    bundle = read_bundle(request.model_dir)
    check_label_space(request, bundle)
    model = load_bundle_model(
        bundle, federation_seed=resolve_seed(bundle, request.federation_seed), device=device
    )
    attention = require_class_attention(model, bundle.method.name) if request.explain_dir else None
    local = None
    if request.thresholds == "local" and request.state_dir is not None:
        local = local_thresholds_for(
            bundle,
            request.model_dir,
            request.state_dir,
            lambda images: probabilities(model, images, device=device),
        )
        if (request.state_dir / LEDGER_FILE).is_file():
            write_site_report(request.state_dir)  # the audit report says they were fitted
    source = _read(request, bundle.image_size, progress)
    probs = probabilities(model, source.images, device=device, progress=progress)
    thresholds = bundle.threshold_values if local is None else local.thresholds
    positives = positive_findings(probs, thresholds, bundle.class_names)
    overlays: list[Overlay] = []
    if attention is not None and request.explain_dir is not None:
        attention = attention.to("cpu")
        paths = source.paths

        def background(i: int) -> np.ndarray:
            return source.images[i] if paths is None else read_native_grayscale(paths[i])

        overlays = write_overlays(
            attention,
            keys=source.keys,
            images=source.images,
            positives=positives,
            class_names=bundle.class_names,
            out_dir=request.explain_dir,
            background=background,
        )
    result = PredictionResult(
        kind=source.kind,
        method=bundle.method.name,
        class_names=bundle.class_names,
        thresholds=thresholds,
        keys=source.keys,
        probabilities=probs,
        positives=positives,
        unused=source.unused,
        overlays=tuple(overlays),
        out=request.out,
        local=local,
    )
    write_result(result)
    return result


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def unused_path(out: Path) -> Path:
    """Where a CSV output's list of unused files goes: ``NAME.unused.csv`` beside it."""
    return out.with_name(out.stem + ".unused.csv")


def write_result(result: PredictionResult) -> None:
    """Write ``result.out`` (CSV: one row per image, plus ``NAME.unused.csv``; or JSON).

    Probabilities are written with ``repr``, so they read back bit for bit.

    Raises:
        CheckpointError: if a file cannot be written.
    """
    out = result.out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            write_json(out, result.to_json_dict(), remedy=WRITABLE_OUT)
            return
        header = ["key", *(f"p_{name}" for name in result.class_names), "positive"]
        rows = [
            [key, *(repr(float(p)) for p in probs), "|".join(found)]
            for key, probs, found in zip(
                result.keys, result.probabilities, result.positives, strict=True
            )
        ]
        write_atomically(out, _csv_text(header, rows), remedy=WRITABLE_OUT)
        unused = [[u.file, u.reason, u.detail] for u in result.unused]
        write_atomically(
            unused_path(out), _csv_text(["file", "reason", "detail"], unused), remedy=WRITABLE_OUT
        )
    except OSError as exc:
        raise CheckpointError(f"cannot write {out}: {exc}", remedy=WRITABLE_OUT) from exc
