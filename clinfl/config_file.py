"""Reading a federation config file (TOML) into a :class:`~clinfl.config.RunConfig`.

The file has one table per part of the config, with the field names of the dataclasses::

    [data]
    dataset = "digits"
    alpha = 0.5

    [method]
    name = "fedncalign"

    [federation]
    sites = 5
    rounds = 10

    [secagg]        # and [privacy]; [[drops]] tables for injected dropouts

Every unknown table or key and every value of the wrong type is reported at once, with the
field, the value and the fix; the values themselves are then checked by
:func:`~clinfl.config.validate_run_config`. Relative paths are taken relative to the file.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from clinfl.config import (
    DataConfig,
    Dropout,
    FederationConfig,
    MethodConfig,
    PrivacyConfig,
    RunConfig,
    SecAggConfig,
)
from clinfl.errors import ConfigError, ValidationError, Violation

SECTIONS: dict[str, type[Any]] = {
    "data": DataConfig,
    "method": MethodConfig,
    "federation": FederationConfig,
    "secagg": SecAggConfig,
    "privacy": PrivacyConfig,
}


def _allowed(annotation: Any) -> tuple[type[Any], ...]:
    """The Python types a TOML value may have for a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed(arg))
    if origin is typing.Literal:
        return (str,)
    if annotation is Path:
        return (str,)
    if annotation is type(None):
        return ()
    return (annotation,)


def _convert(
    cls: type[Any], table: dict[str, Any], where: str, base: Path, out: list[Violation]
) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{where}.{key}"
        if key not in fields:
            out.append(
                Violation(
                    name, value, "a known key", f"remove it; keys: {', '.join(sorted(fields))}"
                )
            )
            continue
        declared: tuple[type[Any], ...] = _allowed(hints[key])
        allowed = (*declared, int) if float in declared else declared
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            kinds = " or ".join(sorted({t.__name__ for t in allowed}))
            out.append(Violation(name, value, kinds, f"give {key} as {kinds}"))
            continue
        if Path in typing.get_args(hints[key]) or hints[key] is Path:
            given = Path(str(value))
            value = given if given.is_absolute() else (base / given).resolve()
        if isinstance(value, int) and float in declared and int not in declared:
            value = float(value)
        values[key] = value
    return cls(**values)


def _path_keys(cls: type[Any]) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if hints[f.name] is Path or Path in typing.get_args(hints[f.name])
    )


_TABLES: dict[str, type[Any]] = {**SECTIONS, "drops": Dropout}
PATH_FIELDS: tuple[str, ...] = tuple(
    f"{section}.{key}" for section, cls in _TABLES.items() for key in _path_keys(cls)
)


def named_path_fields(document: Any) -> list[str]:
    """Return every path-typed field (``section.key``) that ``document`` sets, whatever its value.

    ``document`` is a parsed config document from anywhere (a coordinator's JSON included); any
    shape is accepted, and a section that is not a table names no field.
    """
    if not isinstance(document, dict):
        return []
    named: list[str] = []
    for name in PATH_FIELDS:
        section, _, key = name.partition(".")
        tables = document.get(section)
        if not isinstance(tables, list):
            tables = [tables]
        if any(isinstance(table, dict) and key in table for table in tables):
            named.append(name)
    return named


def run_config_from_mapping(document: dict[str, Any], *, base: Path) -> RunConfig:
    """Build a :class:`RunConfig` from a parsed config document.

    Raises:
        ValidationError: listing every unknown table or key and every mistyped value.
    """
    out: list[Violation] = []
    parts: dict[str, Any] = {}
    for section, table in document.items():
        if section == "drops":
            continue
        if section not in SECTIONS:
            out.append(
                Violation(
                    section,
                    "a table",
                    "data, method, federation, secagg, privacy, drops",
                    "remove it",
                )
            )
            continue
        if not isinstance(table, dict):
            out.append(Violation(section, table, "a table", f"write [{section}]"))
            continue
        parts[section] = _convert(SECTIONS[section], table, section, base, out)
    drops = document.get("drops", [])
    converted_drops = []
    if not isinstance(drops, list) or not all(isinstance(d, dict) for d in drops):
        out.append(
            Violation("drops", drops, "[[drops]] tables", "write [[drops]] site = ... stage = ...")
        )
    else:
        converted_drops = [
            _convert(Dropout, d, f"drops[{k}]", base, out) for k, d in enumerate(drops)
        ]
    if out:
        raise ValidationError("federation config", out)
    return RunConfig(**parts, drops=tuple(converted_drops))


def load_run_config(path: Path) -> RunConfig:
    """Read a federation config file.

    Raises:
        ConfigError: if the file is missing or not TOML.
        ValidationError: for unknown keys or mistyped values (all of them).
    """
    try:
        document = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(
            f"cannot read {path}: {error.strerror}", remedy="check the path"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}", remedy="fix the file") from None
    return run_config_from_mapping(document, base=path.resolve().parent)
