"""Label spaces (ChestX-ray14, CheXpert, the digits) and label parsing (by name, not position).

A custom label space (a site's own findings) has no fixed class list here: its classes are the
label columns a run names (:mod:`clinfl.data.label_space`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from clinfl.errors import LabelError

CXR14_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observations, in the order and spelling of the CheXpert labeler's CSV
columns. ``No Finding`` is a class, as in CheXpert itself."""
DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
LABEL_SPACES: dict[str, tuple[str, ...]] = {
    "cxr14": CXR14_LABELS,
    "digits": DIGIT_CLASSES,
    "chexpert": CHEXPERT_LABELS,
}
NO_FINDING = "No Finding"
FINDING_COLUMN = "Finding Labels"


def normal_label(name: str) -> str:
    """Return ``name`` as label names are compared: case, ``_`` and extra spaces ignored."""
    return " ".join(name.replace("_", " ").lower().split())


_ALIASES = {normal_label(name): name for name in CXR14_LABELS}


def canonical_label(name: str) -> str | None:
    """Return the canonical ChestX-ray14 name for ``name`` (ignoring case and underscores)."""
    return _ALIASES.get(normal_label(name))


def parse_finding_labels(
    values: Sequence[str], *, classes: Sequence[str] = CXR14_LABELS
) -> np.ndarray:
    """Turn ``'A|B'``-style ``Finding Labels`` strings into a ``[N, C]`` uint8 multi-hot matrix.

    ``No Finding`` (or an empty cell) is the all-zero vector.

    Raises:
        LabelError: naming every unknown label found.
    """
    index = {normal_label(name): i for i, name in enumerate(classes)}
    out = np.zeros((len(values), len(classes)), dtype=np.uint8)
    unknown: set[str] = set()
    for row, value in enumerate(values):
        for part in value.split("|"):
            part = part.strip()
            if not part or (part == NO_FINDING and normal_label(part) not in index):
                continue
            if normal_label(part) not in index:
                unknown.add(part)
                continue
            out[row, index[normal_label(part)]] = 1
    if unknown:
        raise LabelError(
            f"unknown label name(s) in '{FINDING_COLUMN}': {', '.join(sorted(unknown))}",
            remedy=f"use only the label names ({', '.join(classes)}) or '{NO_FINDING}'",
        )
    return out


def named_label_columns(
    header: Sequence[str], *, classes: Sequence[str] = CXR14_LABELS
) -> dict[str, str] | None:
    """Map each class name to its column in ``header`` when every class has a column.

    Returns None when the table does not hold a column for every class.
    """
    wanted = set(classes)
    found: dict[str, str] = {}
    for column in header:
        name = canonical_label(column) or column.strip()
        if name in wanted:
            found[name] = column
    return found if len(found) == len(wanted) else None


def parse_label_columns(
    rows: Sequence[Mapping[str, str]],
    columns: Mapping[str, str],
    *,
    classes: Sequence[str] = CXR14_LABELS,
) -> np.ndarray:
    """Read one named 0/1 column per class into a ``[N, C]`` uint8 matrix in ``classes`` order.

    Raises:
        LabelError: if a cell is not 0 or 1.
    """
    out = np.zeros((len(rows), len(classes)), dtype=np.uint8)
    for k, name in enumerate(classes):
        column = columns[name]
        for i, row in enumerate(rows):
            cell = (row.get(column) or "").strip()
            if cell in ("1", "1.0"):
                out[i, k] = 1
            elif cell not in ("0", "0.0", ""):
                raise LabelError(
                    f"column '{column}' row {i + 2} holds {cell!r}, not 0 or 1",
                    remedy="label columns must hold 0 or 1",
                )
    return out
