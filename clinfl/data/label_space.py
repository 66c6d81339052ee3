"""A label space's identity: its name and its ordered classes, with a stable digest.

Built-in spaces (:data:`~clinfl.data.labels.LABEL_SPACES`: ``cxr14``, ``chexpert``, ``digits``)
have fixed classes. The ``custom`` space is a site's own findings: its classes are the label
columns a run names (``label_columns``), in that order.

A model is trained in one label space; its output ``k`` means class ``k`` of that space. Two
spaces are the same only if their names and their ordered classes are, which
:attr:`LabelSpace.digest` condenses (recorded in ``model.json`` and the model card). Whatever
uses a model on data, or a run on a site's data, checks the two spaces with
:func:`check_same_space`, which names the difference in one line.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from clinfl.data.labels import LABEL_SPACES, normal_label
from clinfl.errors import LabelError, ValidationError, Violation

CUSTOM = "custom"
SPACE_NAMES: tuple[str, ...] = (*LABEL_SPACES, CUSTOM)
UNCERTAIN_POLICIES: tuple[str, ...] = ("ones", "zeros")
"""How an uncertain CheXpert mention (-1) becomes a target: ``ones`` (the CheXpert paper's
U-Ones, positive) or ``zeros`` (U-Zeros, negative)."""
MIN_CLASSES = 2
_DIGEST_LABEL = b"clinfl/label-space/v1\n"


@dataclass(frozen=True)
class LabelSpace:
    """A label space: its name and its classes in output order."""

    name: str
    classes: tuple[str, ...]

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the name and the ordered classes: equal digests, same space."""
        document = json.dumps([self.name, list(self.classes)], separators=(",", ":"))
        return hashlib.sha256(_DIGEST_LABEL + document.encode()).hexdigest()

    def describe(self) -> str:
        """Return e.g. ``custom (3 classes: Effusion, Nodule, Mass)``."""
        shown = ", ".join(self.classes[:16]) + (", ..." if len(self.classes) > 16 else "")
        return f"{self.name} ({len(self.classes)} classes: {shown})"


def label_space_problems(name: str, columns: Sequence[str]) -> list[Violation]:
    """Return every problem of the label space ``name`` with ``columns`` (none: it is valid).

    ``custom`` needs at least two distinct, non-blank column names (a name may not hold ``|``,
    the ``Finding Labels`` separator); a built-in space takes no columns.
    """
    field = "label_columns"
    problems: list[Violation] = []
    if name not in SPACE_NAMES:
        allowed = f"one of {', '.join(SPACE_NAMES)}"
        return [Violation("label_space", name, allowed, "use --label-space cxr14")]
    if name != CUSTOM:
        if columns:
            problems.append(
                Violation(
                    field,
                    list(columns),
                    f"none for the {name!r} label space (its classes are fixed)",
                    "leave label_columns out, or use label_space = 'custom'",
                )
            )
        return problems
    if len(columns) < MIN_CLASSES:
        problems.append(
            Violation(
                field,
                list(columns),
                f"at least {MIN_CLASSES} label column names",
                "name each finding column of the labels file, e.g. --label-column Effusion "
                "--label-column Nodule",
            )
        )
    blank = [c for c in columns if not c.strip() or "|" in c]
    if blank:
        problems.append(
            Violation(field, blank, "non-blank names without '|'", "give each column's header")
        )
    counts = Counter(normal_label(c) for c in columns)
    duplicates = [c for c in columns if counts[normal_label(c)] > 1]
    if duplicates:
        problems.append(
            Violation(
                field,
                duplicates,
                "distinct names (compared ignoring case and '_')",
                "name each column once",
            )
        )
    return problems


def resolve_label_space(name: str, columns: Sequence[str] = ()) -> LabelSpace:
    """Return the label space ``name`` (``custom``: its classes are ``columns``, in order).

    Raises:
        ValidationError: listing every problem (see :func:`label_space_problems`).
    """
    problems = label_space_problems(name, columns)
    if problems:
        raise ValidationError("label space", problems)
    classes = tuple(c.strip() for c in columns) if name == CUSTOM else LABEL_SPACES[name]
    return LabelSpace(name, classes)


def space_difference(expected: LabelSpace, given: LabelSpace) -> str | None:
    """Return how ``given`` differs from ``expected`` in a few words, or None if it does not."""
    if expected.digest == given.digest:
        return None
    if expected.classes == given.classes:
        return f"the names differ ({expected.name!r} vs {given.name!r})"
    lacks = [c for c in expected.classes if c not in given.classes]
    adds = [c for c in given.classes if c not in expected.classes]
    if lacks or adds:
        parts = [f"lacks {', '.join(lacks)}"] * bool(lacks) + [f"adds {', '.join(adds)}"] * bool(
            adds
        )
        return "the classes differ: it " + " and ".join(parts)
    return (
        "the same classes in another order: "
        f"{', '.join(expected.classes)} vs {', '.join(given.classes)}"
    )


def check_same_space(expected: LabelSpace, given: LabelSpace, *, what: str, remedy: str) -> None:
    """Refuse ``given`` unless it is ``expected`` (name and ordered classes).

    ``what`` names both sides, e.g. ``"the model predicts {expected}; the data is in {given}"``
    (formatted with each space's :meth:`~LabelSpace.describe`).

    Raises:
        LabelError: one line naming both spaces and their difference.
    """
    difference = space_difference(expected, given)
    if difference is not None:
        line = what.format(expected=expected.describe(), given=given.describe())
        raise LabelError(f"{line}: {difference}", remedy=remedy)
