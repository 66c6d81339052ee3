"""Local operating points: per-class thresholds a site fits on its own validation studies.

The federation's thresholds are chosen on validation data of the whole federation. A site may
prefer thresholds fitted to its own population: ``clinfl model predict --thresholds local``
fits them with the model it predicts with (the federation's selected model, as ``clinfl model
export`` wrote it) on the validation studies the site held out in that run
(:func:`site_agent.local_split.rebuild_validation`), by the run's threshold rule
(:func:`clinfl.thresholds.choose_thresholds`, as the federation's evaluator uses it).

Nothing is sent anywhere. The thresholds are kept in the site's state folder
(``local_thresholds.json``, plain JSON) with the model (run, round, SHA-256 of the weights) and
the rule they came from, and are reused while the model and the rule are the same; the site's
audit report lists them (:func:`local_thresholds_summary`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from clinfl.audit.schema import LocalThresholdsSection
from clinfl.data.imageset import ImageSet
from clinfl.errors import DataError, ModelError
from clinfl.files import write_json
from clinfl.model_io import ModelBundle
from clinfl.model_io.bundle import WEIGHTS_FILE
from clinfl.thresholds import ThresholdRule, choose_thresholds, parse_rule
from site_agent.local_split import WRITABLE_STATE, read_split, rebuild_validation

LOCAL_THRESHOLDS_FILE = "local_thresholds.json"
FORMAT = "clinfl-local-thresholds"
FORMAT_VERSION = 1
Scorer = Callable[[np.ndarray], np.ndarray]  # uint8 images [N, H, W] -> probabilities [N, C]


@dataclass(frozen=True)
class LocalThresholds:
    """Thresholds a site fitted on its own validation studies, and what they came from."""

    rule: str
    run_id: str
    round: int | None  # the model's round in its run (the selected round of an exported model)
    weights_sha256: str
    class_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    flagged: tuple[bool, ...]  # no validation positive at this site: the class keeps 0.5
    validation_studies: int
    validation_images: int
    fitted_at: str  # UTC, ISO 8601

    def to_json_dict(self) -> dict[str, Any]:
        """The document ``local_thresholds.json`` holds (JSON types)."""
        document = asdict(self)
        for name in ("class_names", "thresholds", "flagged"):
            document[name] = list(document[name])
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "sent": "never"} | document

    @classmethod
    def from_json_dict(cls, document: dict[str, Any]) -> LocalThresholds:
        """Rebuild the thresholds from :meth:`to_json_dict`'s document.

        Raises:
            KeyError, TypeError, ValueError: for a malformed document.
        """
        if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
            raise ValueError("not a local thresholds document")
        values = {f.name: document[f.name] for f in fields(cls)}
        values["class_names"] = tuple(str(c) for c in values["class_names"])
        values["thresholds"] = tuple(float(t) for t in values["thresholds"])
        values["flagged"] = tuple(bool(f) for f in values["flagged"])
        if not len(values["class_names"]) == len(values["thresholds"]) == len(values["flagged"]):
            raise ValueError("per-class lists of different lengths")
        return cls(**values)

    def fits(self, *, run_id: str, weights_sha256: str, rule: str) -> bool:
        """Whether these thresholds were fitted with this model under this rule."""
        return (self.run_id, self.weights_sha256, self.rule) == (run_id, weights_sha256, rule)


def fit_local_thresholds(
    validation: ImageSet,
    probabilities: np.ndarray,
    rule: ThresholdRule,
    *,
    run_id: str,
    round_number: int | None,
    weights_sha256: str,
    fitted_at: str | None = None,
) -> LocalThresholds:
    """Choose one threshold per class on the site's ``validation`` set by ``rule``.

    ``probabilities`` are the model's outputs on ``validation.images``. The thresholds are
    exactly :func:`~clinfl.thresholds.choose_thresholds`'s.

    Raises:
        DataError: if ``validation`` holds no image.
        ValueError: if ``probabilities`` do not match the set's targets (a programming error).
    """
    if len(validation) == 0:
        raise DataError(
            "this site holds no validation study to fit thresholds on",
            remedy="predict with the model folder's own thresholds (leave out --thresholds local)",
        )
    chosen = choose_thresholds(validation.targets, probabilities, rule)
    return LocalThresholds(
        rule=rule.text,
        run_id=run_id,
        round=round_number,
        weights_sha256=weights_sha256,
        class_names=validation.class_names,
        thresholds=chosen.thresholds,
        flagged=chosen.flagged,
        validation_studies=int(np.unique(validation.groups).size),
        validation_images=len(validation),
        fitted_at=fitted_at or datetime.now(UTC).isoformat(timespec="seconds"),
    )


def read_local_thresholds(state_dir: Path) -> LocalThresholds | None:
    """Return the thresholds kept in ``state_dir`` (None: none fitted there).

    Raises:
        DataError: if the file is unreadable.
    """
    path = state_dir / LOCAL_THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        return LocalThresholds.from_json_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise DataError(
            f"{path} is unreadable",
            remedy="remove it; `clinfl model predict --thresholds local` fits the thresholds again",
        ) from None


def write_local_thresholds(state_dir: Path, local: LocalThresholds) -> None:
    """Keep ``local`` in ``state_dir`` (atomically, replacing earlier thresholds).

    Raises:
        CheckpointError: if the file cannot be written.
    """
    write_json(state_dir / LOCAL_THRESHOLDS_FILE, local.to_json_dict(), remedy=WRITABLE_STATE)


def weights_digest(model_dir: Path) -> str:
    """SHA-256 of the model folder's weights file (which :func:`read_bundle` checked).

    Raises:
        ModelError: if the file cannot be read.
    """
    try:
        return hashlib.sha256((model_dir / WEIGHTS_FILE).read_bytes()).hexdigest()
    except OSError:
        raise ModelError(
            f"model folder {model_dir} has no readable {WEIGHTS_FILE}",
            remedy="export the model folder again from its run",
        ) from None


def local_thresholds_for(
    bundle: ModelBundle, model_dir: Path, state_dir: Path, score: Scorer
) -> LocalThresholds:
    """Return this site's thresholds for the model in ``model_dir``: kept ones, or fitted now.

    The run is the model's (``provenance.json``); the split and the rule are those the site
    recorded when it joined that run. ``score`` gives the model's probabilities on images.

    Raises:
        ModelError: if the state holds no record of the model's run, or the model's classes or
            image size are not the ones the site trained with.
        DataError: if the site's export changed since the run, no validation study is left,
            or a kept file is unreadable.
        LabelError: if the export's labels no longer read.
        CheckpointError: if the thresholds cannot be kept in the state folder.
    """
    raw_run = bundle.provenance.get("run_id")
    record = read_split(state_dir, None if raw_run is None else str(raw_run))
    if record.class_names != bundle.class_names or record.image_size != bundle.image_size:
        raise ModelError(
            f"the model predicts {len(bundle.class_names)} classes at {bundle.image_size} px; "
            f"this site trained run {record.run_id!r} on {len(record.class_names)} classes at "
            f"{record.image_size} px",
            remedy="use the model folder exported from that run",
        )
    digest = weights_digest(model_dir)
    rule = parse_rule(record.threshold_rule)
    kept = read_local_thresholds(state_dir)
    if kept is not None and kept.fits(run_id=record.run_id, weights_sha256=digest, rule=rule.text):
        return kept
    validation = rebuild_validation(record, state_dir)
    raw_round = bundle.provenance.get("selected_round")
    local = fit_local_thresholds(
        validation,
        score(validation.images),
        rule,
        run_id=record.run_id,
        round_number=None if raw_round is None else int(raw_round),
        weights_sha256=digest,
    )
    write_local_thresholds(state_dir, local)
    return local


def local_thresholds_summary(state_dir: Path) -> LocalThresholdsSection | None:
    """The audit report's account of the local thresholds kept in ``state_dir`` (None: none).

    Raises:
        DataError: if the kept file is unreadable.
    """
    local = read_local_thresholds(state_dir)
    if local is None:
        return None
    return {
        "rule": local.rule,
        "run_id": local.run_id,
        "round": local.round,
        "weights_sha256": local.weights_sha256,
        "validation_studies": local.validation_studies,
        "validation_images": local.validation_images,
        "thresholds": dict(zip(local.class_names, local.thresholds, strict=True)),
        "flagged": [n for n, f in zip(local.class_names, local.flagged, strict=True) if f],
        "fitted_at": local.fitted_at,
        "sent": "never",
    }
