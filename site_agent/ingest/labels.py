"""The export's label table: keyed by SOPInstanceUID (or StudyInstanceUID / AccessionNumber).

It holds either a ChestX-ray14-style ``Finding Labels`` column or one named 0/1 column per class
of the label space (the 14 ChestX-ray14 findings, or the ten digits of the bundled demo).
Keys are compared through the site's salted hash, so raw identifiers never leave this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clinfl.data.chestxray14 import read_label_table
from clinfl.data.labels import (
    CXR14_LABELS,
    FINDING_COLUMN,
    named_label_columns,
    parse_finding_labels,
    parse_label_columns,
)
from clinfl.errors import LabelError
from site_agent.ingest.index import salted_hash

KEY_COLUMNS = {
    "sop": "SOPInstanceUID",
    "study": "StudyInstanceUID",
    "accession": "AccessionNumber",
}
LABEL_FILE = "labels.csv"


def find_label_table(data_dir: Path, given: Path | None) -> Path | None:
    """Return ``given``, else a ``labels.csv`` at the top of the export, else None."""
    if given is not None:
        return given
    candidate = data_dir / LABEL_FILE
    return candidate if candidate.is_file() else None


def read_labels(
    path: Path, *, key: str, salt: bytes, classes: tuple[str, ...] = CXR14_LABELS
) -> dict[str, np.ndarray]:
    """Return ``{salted key hash: C-vector}`` from the label table, in ``classes`` order.

    Raises:
        DataError: if the table cannot be read.
        LabelError: if the key column is missing, a label name is unknown, or a cell is not 0/1.
    """
    header, rows = read_label_table(path)
    column = KEY_COLUMNS[key]
    if column not in header:
        raise LabelError(
            f"label table {path.name} has no '{column}' column to match images by",
            remedy=f"add a '{column}' column, or another --label-key (sop, study, accession)",
        )
    named = named_label_columns(header, classes=classes)
    if named is not None:
        targets = parse_label_columns(rows, named, classes=classes)
    elif FINDING_COLUMN in header:
        targets = parse_finding_labels(
            [row.get(FINDING_COLUMN) or "" for row in rows], classes=classes
        )
    else:
        raise LabelError(
            f"label table {path.name} has neither '{FINDING_COLUMN}' "
            f"nor the {len(classes)} named columns",
            remedy="add a 'Finding Labels' column or 0/1 columns named " + ", ".join(classes),
        )
    return {
        salted_hash(salt, row.get(column) or ""): targets[i]
        for i, row in enumerate(rows)
        if (row.get(column) or "").strip()
    }
