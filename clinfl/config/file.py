"""Reading a federation config file (TOML) into a :class:`~clinfl.config.run.RunConfig`.

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
field, the value and the fix (:mod:`clinfl.config.checks`); the values themselves are then
checked by :func:`~clinfl.config.validation.validate_run_config`. Relative paths are taken
relative to the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from clinfl.config.checks import Problems, as_declared, read_tables
from clinfl.config.run import SECTIONS, Dropout, RunConfig
from clinfl.errors import ConfigError


def run_config_from_mapping(document: dict[str, Any], *, base: Path) -> RunConfig:
    """Build a :class:`RunConfig` from a parsed config document.

    Raises:
        ValidationError: listing every unknown table or key and every mistyped value.
    """
    problems = Problems()
    read = read_tables(document, SECTIONS, problems, arrays={"drops": Dropout}, base=base)
    problems.raise_if_any("federation config")
    parts = {name: as_declared(SECTIONS[name](**read[name])) for name in SECTIONS if name in read}
    drops = tuple(as_declared(Dropout(**values)) for values in read.get("drops", ()))
    return RunConfig(**parts, drops=drops)


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
