"""One site's ingested export, split by study into training, validation and test sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clinfl.data.imageset import ImageSet, SplitData, split_by_group
from clinfl.errors import DataError
from site_agent.ingest.pipeline import IngestOptions, ingest_export

TEST_FRACTION = 0.2
MIN_IMAGES = 10


def ingest_and_split(
    export: Path,
    *,
    state_dir: Path,
    options: IngestOptions,
    labels: Path | None,
    val_fraction: float,
    seed: int,
) -> SplitData:
    """Ingest ``export`` (cached after the first time) and split it by study.

    A fifth of the studies is the test set and ``val_fraction`` of the rest the validation set;
    every image of a study lands in the same split.

    Raises:
        DataError, LabelError: see :func:`~site_agent.ingest.pipeline.ingest_export`, or if
            fewer than 10 images are usable.
    """
    result = ingest_export(
        export,
        state_dir=state_dir,
        options=options,
        labels=labels,
    )
    if len(result.images) < MIN_IMAGES:
        raise DataError(
            f"the export gave only {len(result.images)} labelled images",
            remedy=f"see the quarantine report in {state_dir}",
        )
    classes = options.classes
    everything = ImageSet(result.images, result.targets, result.groups, classes)
    rng = np.random.default_rng(seed)
    rest, test = split_by_group(everything.groups, fraction=TEST_FRACTION, rng=rng)
    train, val = split_by_group(everything.groups[rest], fraction=val_fraction, rng=rng)
    summary = result.summary
    return SplitData(
        train=everything.subset(rest[train]),
        val=everything.subset(rest[val]),
        test=everything.subset(test),
        description=(
            f"DICOM export {export.name}: {summary['files_seen']} files, "
            f"{summary['accepted']} accepted, {summary['quarantined_total']} quarantined"
        ),
    )
