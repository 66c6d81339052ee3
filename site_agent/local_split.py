"""What a deployed site needs, after a run, to rebuild the validation split it trained with.

A site splits its export by study with the run's split seed (:func:`site_agent.setup.load_export`)
and trains on one part. To fit operating thresholds on its *own* validation studies later
(``clinfl model predict --thresholds local``, :mod:`site_agent.local_thresholds`), it must
rebuild exactly that validation set. At each ``join`` it therefore records, in its state folder,
how it read and split its export for that run: the export and label paths, the ingest options,
the image size, the validation fraction, the split seed, the run's threshold rule, and a digest
of the salted study hashes of each part (so a changed export is detected, never silently
re-split). The record is plain JSON, stays in the state folder and is never sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from clinfl.config.seeds import RunSeeds
from clinfl.data.imageset import ImageSet, SplitData
from clinfl.errors import DataError, ModelError
from clinfl.files import write_json
from site_agent.ingest.pipeline import IngestOptions
from site_agent.join import JoinedSite
from site_agent.setup import SiteData, load_export

SPLITS_FILE = "local_splits.json"  # in the site's state folder: one record per run joined
FORMAT = "clinfl-site-splits"
FORMAT_VERSION = 1
WRITABLE_STATE = "make the site's --state folder writable by the account that runs clinfl"


def groups_digest(part: ImageSet) -> str:
    """SHA-256 of a split part's sorted study hashes (salted at ingest: no identifier)."""
    return hashlib.sha256(json.dumps(sorted(int(g) for g in part.groups)).encode()).hexdigest()


@dataclass(frozen=True)
class SplitRecord:
    """How a site read and split its export for one run (see the module docstring)."""

    run_id: str
    export: str
    labels: str | None
    options: dict[str, Any]  # the IngestOptions, as JSON types
    image_size: int
    val_fraction: float
    split_seed: int
    threshold_rule: str
    class_names: tuple[str, ...]
    train_digest: str
    val_digest: str

    @classmethod
    def of(cls, data: SiteData, joined: JoinedSite, *, run_id: str) -> SplitRecord:
        """The record of the split ``joined`` holds, read from ``data`` under its run."""
        run = joined.run
        options = asdict(data.options) | {"uncertain_labels": run.data.uncertain_labels}
        return cls(
            run_id=run_id,
            export=str(data.export.resolve()),
            labels=None if data.labels is None else str(data.labels.resolve()),
            options=options,
            image_size=joined.spec.image_size,
            val_fraction=run.data.val_fraction,
            split_seed=RunSeeds.of(run.federation).split,
            threshold_rule=run.federation.threshold_rule,
            class_names=joined.data.val.class_names,
            train_digest=groups_digest(joined.data.train),
            val_digest=groups_digest(joined.data.val),
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The record as JSON types."""
        document = asdict(self)
        document["class_names"] = list(self.class_names)
        return document

    @classmethod
    def from_json_dict(cls, document: dict[str, Any]) -> SplitRecord:
        """Rebuild a record written by :meth:`to_json_dict`.

        Raises:
            KeyError, TypeError, ValueError: for a malformed record.
        """
        names = {f.name for f in fields(cls)}
        if set(document) != names:
            raise ValueError(f"fields {sorted(set(document) ^ names)}")
        return cls(**(document | {"class_names": tuple(document["class_names"])}))

    def site_data(self) -> SiteData:
        """The export as the site read it for this run."""
        values = dict(self.options)
        for name in ("modalities", "body_parts", "views", "label_columns"):
            values[name] = tuple(values[name])
        return SiteData(
            Path(self.export),
            None if self.labels is None else Path(self.labels),
            IngestOptions(**values),
        )


def _read_all(state_dir: Path) -> dict[str, Any]:
    path = state_dir / SPLITS_FILE
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text())
        if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
            raise ValueError("format")
        runs = document["runs"]
        if not isinstance(runs, dict):
            raise ValueError("runs")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError):
        raise DataError(
            f"{path} is unreadable", remedy="remove it; the site records each run again at join"
        ) from None
    return runs


def record_split(state_dir: Path, record: SplitRecord) -> None:
    """Add (or replace) ``record`` in the state folder's record of runs.

    Raises:
        DataError: if the existing file is unreadable.
        CheckpointError: if the file cannot be written.
    """
    runs = _read_all(state_dir) | {record.run_id: record.to_json_dict()}
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "runs": runs}
    write_json(state_dir / SPLITS_FILE, document, remedy=WRITABLE_STATE)


def read_split(state_dir: Path, run_id: str | None) -> SplitRecord:
    """Return the split the site recorded when it joined ``run_id``.

    Raises:
        ModelError: if the state holds no record of that run (the site did not take part in
            the run that trained the model, or ``state_dir`` is not the site's state folder).
        DataError: if the record is unreadable.
    """
    runs = _read_all(state_dir)
    if run_id is None or run_id not in runs:
        which = "names no run" if run_id is None else f"comes from run {run_id!r}"
        raise ModelError(
            f"the model {which}, and {state_dir} holds no record of this site joining it",
            remedy="pass the --state folder `clinfl site run` used, with the model folder "
            "exported from a run this site took part in",
        )
    try:
        return SplitRecord.from_json_dict(runs[run_id])
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{state_dir / SPLITS_FILE} holds an unreadable record of run {run_id!r}",
            remedy="remove the file; the site records each run again at join",
        ) from None


def rebuild_validation(record: SplitRecord, state_dir: Path) -> ImageSet:
    """Ingest the export again (from the cache) and return the run's validation set.

    Raises:
        DataError: if the export is gone or unreadable, if it no longer splits into the same
            studies (it changed since the run), or if the validation set holds no study.
        LabelError: if its labels no longer read.
    """
    split: SplitData = load_export(
        record.site_data(),
        state_dir=state_dir,
        image_size=record.image_size,
        val_fraction=record.val_fraction,
        seed=record.split_seed,
    )
    if (groups_digest(split.train), groups_digest(split.val)) != (
        record.train_digest,
        record.val_digest,
    ):
        raise DataError(
            f"the export {record.export} changed since run {record.run_id!r}: its validation "
            "studies can no longer be rebuilt",
            remedy="predict with the model folder's own thresholds (leave out --thresholds "
            "local), or restore the export as it was during the run",
        )
    if len(split.val) == 0:
        raise DataError(
            f"run {record.run_id!r} left this site no validation study to fit thresholds on",
            remedy="predict with the model folder's own thresholds (leave out --thresholds local)",
        )
    return split.val
