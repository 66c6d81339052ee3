"""A label table's targets in a label space: one named column per class, or ``Finding Labels``.

Columns are found by name, never by position, comparing names without case, ``_`` or extra
spaces (``pleural_effusion`` is ``Pleural Effusion``). A cell is ``1`` (positive), ``0`` or blank
(negative: a finding the report does not mention), or, in the ``chexpert`` space only, ``-1``
(the CheXpert labeler's *uncertain*), which becomes 1 (``uncertain="ones"``, the CheXpert paper's
U-Ones) or 0 (``"zeros"``, U-Zeros). Numbers may be written as floats (``1.0``, ``-1.0``), as the
labeler writes them.

A table without every class column may instead hold a ChestX-ray14-style ``Finding Labels``
column (``A|B`` names, or ``No Finding``), except in the ``chexpert`` space, whose labeler writes
columns. Every problem of a table is reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from clinfl.data.label_space import LabelSpace
from clinfl.data.labels import FINDING_COLUMN, normal_label, parse_finding_labels
from clinfl.errors import LabelError

CHEXPERT = "chexpert"
SHOWN_CELLS = 5  # bad cells named per column; the rest are counted


def class_columns(
    header: Sequence[str], classes: Sequence[str]
) -> tuple[dict[str, str], list[str], list[str]]:
    """Match each class to its column of ``header``.

    Returns:
        ``{class: column}`` for the classes found, the classes without a column, and a line for
        each class that two columns name.
    """
    by_name: dict[str, list[str]] = {}
    for column in header:
        by_name.setdefault(normal_label(column), []).append(column)
    found: dict[str, str] = {}
    missing: list[str] = []
    clashes: list[str] = []
    for name in classes:
        columns = by_name.get(normal_label(name), [])
        if not columns:
            missing.append(name)
            continue
        found[name] = columns[0]
        if len(columns) > 1:
            clashes.append(f"columns {' and '.join(repr(c) for c in columns)} both name {name!r}")
    return found, missing, clashes


def _cell_value(cell: str, *, uncertain: str | None) -> int | None:
    """Return the target of one cell, or None if the cell is not a label."""
    text = cell.strip()
    if not text:
        return 0
    try:
        number = float(text)
    except ValueError:
        return None
    if number in (0.0, 1.0):
        return int(number)
    if number == -1.0 and uncertain is not None:
        return 1 if uncertain == "ones" else 0
    return None


def table_targets(
    header: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    space: LabelSpace,
    *,
    uncertain: str = "ones",
    source: str = "the label table",
) -> np.ndarray:
    """Return the ``[N, C]`` uint8 targets of ``rows`` in ``space``'s class order.

    ``uncertain`` (``ones`` or ``zeros``) maps the ``chexpert`` space's ``-1`` cells; other spaces
    accept only 0, 1 or blank. ``source`` names the table in messages.

    Raises:
        LabelError: listing every problem at once: classes without a column (with the table's
            columns), classes named by two columns, and cells that are not labels (row numbers
            as in the file, the header being row 1); or unknown names in ``Finding Labels``.
    """
    columns, missing, clashes = class_columns(header, space.classes)
    if missing and FINDING_COLUMN in header and space.name != CHEXPERT:
        values = [row.get(FINDING_COLUMN) or "" for row in rows]
        try:
            return parse_finding_labels(values, classes=space.classes)
        except LabelError as error:
            raise LabelError(
                f"{source} does not fit the {space.describe()} label space: {error.message}",
                remedy=error.remedy,
            ) from None
    problems: list[str] = []
    if missing:
        instead = "" if space.name == CHEXPERT else f" and no '{FINDING_COLUMN}' column"
        problems.append(
            f"no column for {', '.join(repr(m) for m in missing)}{instead} (its columns: "
            f"{', '.join(repr(h) for h in header)})"
        )
    problems += clashes
    allowed = "0, 1, -1 (uncertain) or blank" if space.name == CHEXPERT else "0, 1 or blank"
    targets = np.zeros((len(rows), len(space.classes)), dtype=np.uint8)
    for k, name in enumerate(space.classes):
        column = columns.get(name)
        if column is None:
            continue
        bad: list[str] = []
        for i, row in enumerate(rows):
            cell = row.get(column) or ""
            value = _cell_value(cell, uncertain=uncertain if space.name == CHEXPERT else None)
            if value is None:
                bad.append(f"row {i + 2} {cell.strip()!r}")
            else:
                targets[i, k] = value
        if bad:
            more = f" and {len(bad) - SHOWN_CELLS} more" if len(bad) > SHOWN_CELLS else ""
            problems.append(
                f"column {column!r} holds other values than {allowed}: "
                f"{', '.join(bad[:SHOWN_CELLS])}{more}"
            )
    if problems:
        raise LabelError(
            f"{source} does not fit the {space.describe()} label space: " + "; ".join(problems),
            remedy="give one column per class, named as the label space names it, holding "
            + allowed,
        )
    return targets
