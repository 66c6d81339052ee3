"""The export's label table: keyed by SOPInstanceUID (or StudyInstanceUID / AccessionNumber).

It holds one named column per class of the label space (the 14 ChestX-ray14 findings, the 14
CheXpert observations, a site's own findings, or the ten digits of the bundled demo), or a
ChestX-ray14-style ``Finding Labels`` column (:func:`~clinfl.data.label_table.table_targets`).
Keys are compared through the site's salted hash, so raw identifiers never leave this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clinfl.data.chestxray14 import read_label_table
from clinfl.data.label_space import LabelSpace
from clinfl.data.label_table import table_targets
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
    path: Path, *, key: str, salt: bytes, space: LabelSpace, uncertain: str = "ones"
) -> dict[str, np.ndarray]:
    """Return ``{salted key hash: C-vector}`` from the label table, in ``space``'s class order.

    ``uncertain`` maps the ``chexpert`` space's uncertain (-1) cells (``ones`` or ``zeros``).

    Raises:
        DataError: if the table cannot be read.
        LabelError: if the key column is missing, or the table does not fit ``space`` (a class
            without a column, an unknown label name, a cell that is not a label).
    """
    header, rows = read_label_table(path)
    column = KEY_COLUMNS[key]
    if column not in header:
        raise LabelError(
            f"label table {path.name} has no '{column}' column to match images by",
            remedy=f"add a '{column}' column, or another --label-key (sop, study, accession)",
        )
    targets = table_targets(
        header, rows, space, uncertain=uncertain, source=f"label table {path.name}"
    )
    return {
        salted_hash(salt, row.get(column) or ""): targets[i]
        for i, row in enumerate(rows)
        if (row.get(column) or "").strip()
    }
