"""Which run settings belong to the sites: the one declaration, and all that follows from it.

In a deployment the coordinator's run configuration goes to every site, but some of it cannot
come from the coordinator:

* :data:`SITE_FIELDS` (declared here, and only here): each site decides these itself (its data,
  its hardware, its policy) or the deployment does (the roster is the sites). ``clinfl
  coordinator start`` refuses a configuration that sets any of them
  (:func:`refuse_site_settings`).
* :data:`PATH_FIELDS` (read off the schema: every field typed as a path): a path names a file on
  the machine that reads the configuration, so none is sent (:func:`portable_run_config`), and a
  site declines a configuration that names one, whatever its value (SECAGG.md, R8;
  :func:`named_path_fields`).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from clinfl.config.checks import Problems
from clinfl.config.run import SECTIONS, DatasetName, Dropout, RunConfig

# field ("section.key", or a whole table) -> why it belongs to the sites, not the coordinator
SITE_FIELDS: dict[str, str] = {
    "data.dataset": "each site reads its own DICOM export",
    "data.images": "each site reads its own export (`clinfl site run --data`)",
    "data.labels": "each site reads its own label table (`clinfl site run --labels`)",
    "data.split_dir": "each site splits its own studies",
    "data.alpha": "a deployment's label skew is the sites' real data",
    "data.rho": "a deployment's label skew is the sites' real data",
    "data.composites_per_pair": "the sites' data is their own",
    "data.max_samples": "the sites' data is their own",
    "federation.sites": "the sites are the roster's (`clinfl pki admit`)",
    "federation.threads": "each site sets its own (`clinfl site run --threads`)",
    "federation.device": "each site trains on its own hardware (the CPU in a deployment)",
    "privacy.policy": "each site enforces its own policy (`clinfl site run --policy`)",
    "privacy.policy_dir": "each site enforces its own policy (`clinfl site run --policy`)",
    "data.cv_folds": "cross-validation is a simulation's (`clinfl simulate --cv`)",
    "data.group_by": "cross-validation is a simulation's (`clinfl simulate --cv`)",
    "data.cv_seed": "cross-validation is a simulation's (`clinfl simulate --cv`)",
    "federation.training": "local-only training is a simulation's baseline",
    "drops": "dropouts are real in a deployment",
}
DEPLOYED_DATASET: DatasetName = "dicom"  # the one data set a deployment trains on (each export)


def _path_keys(cls: type[Any]) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if hints[f.name] is Path or Path in typing.get_args(hints[f.name])
    )


PATH_FIELDS: tuple[str, ...] = tuple(
    f"{section}.{key}"
    for section, cls in {**SECTIONS, "drops": Dropout}.items()
    for key in _path_keys(cls)
)


def refuse_site_settings(config: RunConfig, source: Path) -> None:
    """Refuse, all at once, settings of ``config`` (read from ``source``) that are the sites'.

    Raises:
        ValidationError: naming each such setting and why it belongs to the sites.
    """
    defaults = RunConfig()
    problems = Problems()
    for name, why in SITE_FIELDS.items():
        section, _, key = name.partition(".")
        given, default = getattr(config, section), getattr(defaults, section)
        if key:
            given, default = getattr(given, key), getattr(default, key)
        if given != default and not (name == "data.dataset" and given == DEPLOYED_DATASET):
            problems.add(name, given, "not set", f"remove it from {source}: {why}")
    problems.raise_if_any(f"deployment config {source}")


def portable_run_config(config: RunConfig) -> dict[str, Any]:
    """Return the run configuration as sites receive it: no path, no dropout, no unset field."""
    document = config.to_json_dict()
    for name in PATH_FIELDS:
        section, _, key = name.partition(".")
        if isinstance(document.get(section), dict):
            document[section].pop(key, None)
    document["drops"] = []  # injected dropouts are a simulation's; a deployment's are real
    return {
        section: {k: v for k, v in values.items() if v is not None}
        if isinstance(values, dict)
        else values
        for section, values in document.items()
    }


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
