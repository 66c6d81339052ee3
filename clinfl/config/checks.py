"""The one way configuration is checked: collect every problem, then raise once.

Run configurations (:mod:`clinfl.config.validation`), run configuration files
(:mod:`clinfl.config.file`) and site policies (:mod:`clinfl.config.policy`) are all checked alike:

1. :func:`read_tables` reads a parsed TOML document against the dataclasses of its tables. An
   unknown table or key, or a value of the wrong type, is a problem and is left out (its
   default stands), so what follows only ever sees well-typed values. Values keep the form they
   were written in (``-1`` stays ``-1`` in a message); :func:`as_declared` then turns whole
   numbers given for float fields into floats.
2. The values are checked on the dataclasses with :class:`Problems`' checks.

Each problem is a :class:`~clinfl.errors.Violation`: the field, the value, what is allowed and
the fix. :meth:`Problems.raise_if_any` raises them all as one
:class:`~clinfl.errors.ValidationError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from clinfl.errors import ValidationError, Violation

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")


class Problems:
    """Every problem found in one piece of configuration, to be raised at once."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def __len__(self) -> int:
        return len(self.violations)

    def add(self, field: str, value: object, allowed: str, fix: str) -> None:
        """Record that ``field`` has ``value``, where ``allowed`` is allowed; ``fix`` says how."""
        self.violations.append(Violation(field, value, allowed, fix))

    def has(self, *fields: str) -> bool:
        """Return whether any of ``fields`` has a problem already."""
        return any(v.field in fields for v in self.violations)

    def choice(
        self, field: str, value: str, choices: tuple[str, ...], fix: str | None = None
    ) -> None:
        """Check that ``value`` is one of ``choices``."""
        if value not in choices:
            self.add(field, value, f"one of {', '.join(choices)}", fix or f"use one of {choices}")

    def whole(
        self, field: str, value: int, low: int, high: int | None = None, fix: str | None = None
    ) -> None:
        """Check that ``value`` is at least ``low`` (and at most ``high``)."""
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"{low}..{high}"
            self.add(field, value, bound, fix or f"set {field} within {bound}")

    def positive(self, field: str, value: float, fix: str) -> None:
        """Check that ``value`` is above zero."""
        if not value > 0:
            self.add(field, value, "> 0", fix)

    def members(
        self, field: str, values: tuple[str, ...], allowed: tuple[str, ...], fix: str
    ) -> None:
        """Check that every one of ``values`` is in ``allowed`` (the unknown ones are named)."""
        unknown = [v for v in values if v not in allowed]
        if unknown:
            self.add(field, unknown, ", ".join(allowed), fix)

    def raise_if_any(self, what: str) -> None:
        """Raise every problem found in ``what`` at once.

        Raises:
            ValidationError: listing every problem, if there is any.
        """
        if self.violations:
            raise ValidationError(what, self.violations)


def _kinds(annotation: Any) -> tuple[type[Any], ...]:
    """The Python types a TOML value may have for a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _kinds(arg))
    if origin is typing.Literal or annotation is Path:
        return (str,)
    if origin is tuple:
        return (list,)  # a TOML array of strings (the only tuples in configuration)
    if annotation is type(None):
        return ()
    if annotation is float:
        return (float, int)
    return (annotation,)


def _is_path(annotation: Any) -> bool:
    return annotation is Path or Path in typing.get_args(annotation)


RENAMED_KEYS: dict[str, str] = {"method.weights": "init_weights"}
"""Keys of earlier config files -> the key that replaced them (reported as a rename)."""


def read_table(
    cls: type[Any], table: Any, where: str, problems: Problems, *, base: Path | None = None
) -> dict[str, Any]:
    """Return the well-typed keys of one TOML ``table`` for dataclass ``cls``.

    A relative path is taken relative to ``base``; a list becomes a tuple. Every unknown key,
    mistyped value and a ``table`` that is not a table are recorded in ``problems``.
    """
    if not isinstance(table, dict):
        problems.add(where, table, "a table", f"write [{where}]")
        return {}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{where}.{key}"
        if key not in known:
            renamed = RENAMED_KEYS.get(name)
            fix = (
                f"renamed to {renamed}: write {where}.{renamed} instead"
                if renamed is not None and renamed in known
                else f"remove it; keys: {', '.join(sorted(known))}"
            )
            problems.add(name, value, "a known key", fix)
            continue
        kinds = _kinds(hints[key])
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            if kinds == (list,):
                problems.add(name, value, "a list of strings", f'write {name} = ["..."]')
            else:
                described = " or ".join(sorted({t.__name__ for t in kinds}))
                problems.add(name, value, described, f"give {name} as {described}")
            continue
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                problems.add(name, value, "a list of strings", f'write {name} = ["..."]')
                continue
            value = tuple(value)
        elif _is_path(hints[key]):
            given = Path(str(value))
            value = given if given.is_absolute() or base is None else (base / given).resolve()
        values[key] = value
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in table:
            problems.add(f"{where}.{f.name}", None, "a value", f"give {where}.{f.name}")
    return values


def read_tables(
    document: Mapping[str, Any],
    tables: Mapping[str, type[Any]],
    problems: Problems,
    *,
    arrays: Mapping[str, type[Any]] | None = None,
    base: Path | None = None,
) -> dict[str, Any]:
    """Read every table of a parsed TOML ``document`` (see :func:`read_table`).

    ``tables`` maps each ``[name]`` to its dataclass, ``arrays`` each ``[[name]]``. Returns the
    well-typed keys of each table given (a list of them for an array). Every unknown table,
    and every problem inside a table, is recorded in ``problems``.
    """
    arrays = arrays or {}
    read: dict[str, Any] = {}
    for name, table in document.items():
        if name in tables:
            read[name] = read_table(tables[name], table, name, problems, base=base)
        elif name in arrays:
            if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
                problems.add(name, table, f"[[{name}]] tables", f"write each as [[{name}]]")
                continue
            read[name] = [
                read_table(arrays[name], item, f"{name}[{k}]", problems, base=base)
                for k, item in enumerate(table)
            ]
        else:
            known = ", ".join([*tables, *arrays])
            problems.add(name, "a table", known, "remove the unknown table")
    return read


def as_declared(value: D) -> D:
    """Return the dataclass ``value`` with whole numbers given for float fields as floats."""
    hints = typing.get_type_hints(type(value))
    floats = {
        f.name: float(given)
        for f in dataclasses.fields(value)
        if float in _kinds(hints[f.name])
        and isinstance(given := getattr(value, f.name), int)
        and not isinstance(given, bool)
    }
    return dataclasses.replace(value, **floats) if floats else value
