"""Command-line options built from the run configuration's schema.

A command lists the run configuration fields it takes as :class:`FieldOption` rows: the field
and its help text. Each option's type and default are the field's own
(:mod:`clinfl.config.run`), so no default is written twice; its name is the field's key unless
the row says otherwise. :func:`with_field_options` puts the options in the command's signature
where its ``fields`` parameter stands (Typer reads the signature) and passes the command one
:class:`FieldValues` in their place, from which :meth:`FieldValues.run_config` builds the
:class:`~clinfl.config.RunConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import typer

from clinfl.config import SECTIONS, Dropout, RunConfig
from clinfl.config.presets import PRESET_FIELDS, preset_help


@dataclass(frozen=True)
class FieldOption:
    """One command-line option that sets one field of the run configuration."""

    field: str  # "section.key", e.g. "federation.lr"
    help: str
    name: str = ""  # the option's name (Python spelling) when it is not the key: "method"

    @property
    def param(self) -> str:
        """The command parameter's name (``--secagg-bits`` is ``secagg_bits``)."""
        return self.name or self.field.partition(".")[2]

    def parameter(self) -> inspect.Parameter:
        """Return the Typer parameter: the field's type (a ``Literal`` as ``str``) and default.

        A field whose default is its data set's preset (:data:`~clinfl.config.presets.
        PRESET_FIELDS`) says so in its help, with each preset's value.
        """
        section, _, key = self.field.partition(".")
        cls = SECTIONS[section]
        default = {f.name: f.default for f in dataclasses.fields(cls)}[key]
        annotation = typing.get_type_hints(cls)[key]
        if typing.get_origin(annotation) is typing.Literal:
            annotation = str  # the choices are checked with every other value
        elif any(typing.get_origin(a) is typing.Literal for a in typing.get_args(annotation)):
            annotation = typing.Optional[str]  # noqa: UP045 (Typer reads this form)
        elif typing.get_origin(annotation) is tuple:  # a repeatable option
            annotation = list[str]
        text = self.help
        if self.field in PRESET_FIELDS:
            text = f"{text} {preset_help(self.field)}"
        return inspect.Parameter(
            self.param,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(default, help=text),
            annotation=annotation,
        )


def _field_value(option: FieldOption, value: Any) -> Any:
    """A repeatable option's values as the field's tuple."""
    section, _, key = option.field.partition(".")
    if typing.get_origin(typing.get_type_hints(SECTIONS[section])[key]) is not tuple:
        return value
    return tuple(value)


class FieldValues:
    """The values a command's field options were given (each field's default when not)."""

    def __init__(self, options: Sequence[FieldOption], given: Mapping[str, Any]) -> None:
        self._values = {
            option.field: _field_value(option, given[option.param]) for option in options
        }

    def __getitem__(self, field: str) -> Any:
        return self._values[field]

    def run_config(
        self, also: Mapping[str, Any] | None = None, *, drops: tuple[Dropout, ...] = ()
    ) -> RunConfig:
        """Return the run configuration of these values.

        ``also`` sets more fields (by ``section.key``), ``drops`` the injected dropouts; every
        other field keeps its default.
        """
        tables: dict[str, dict[str, Any]] = {}
        for field, value in {**self._values, **(also or {})}.items():
            section, _, key = field.partition(".")
            tables.setdefault(section, {})[key] = value
        parts = {section: SECTIONS[section](**values) for section, values in tables.items()}
        return RunConfig(**parts, drops=drops)


def with_field_options(
    options: Sequence[FieldOption],
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a Typer command ``options`` in place of its ``fields: FieldValues`` parameter."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(command, include_extras=True)
        parameters: list[inspect.Parameter] = []
        for parameter in inspect.signature(command).parameters.values():
            if parameter.name == "fields":
                parameters += [option.parameter() for option in options]
            else:  # Typer calls with keywords only
                parameters.append(
                    parameter.replace(
                        kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[parameter.name]
                    )
                )

        @functools.wraps(command)
        def with_fields(**given: Any) -> None:
            values = {option.param: given.pop(option.param) for option in options}
            command(**given, fields=FieldValues(options, values))

        with_fields.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        with_fields.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_fields

    return decorate
