"""The run configuration a deployment runs: a coordinator's file, checked against the roster.

:func:`deployment_run_config` applies a deployment's rules to the federation file ``clinfl
coordinator start --config`` names: the sites' own settings are refused
(:func:`~clinfl.config.site_fields.refuse_site_settings`), the sites are the roster's, the data
set is each site's DICOM export, and the run is checked and its data-set defaults resolved as
``clinfl simulate`` checks and resolves its own (:func:`~clinfl.config.validate_run_config`,
:func:`~clinfl.config.presets.resolve_defaults`). No path survives: the sites read their own data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from clinfl.algorithms import available_algorithms
from clinfl.config import RunConfig, validate_run_config
from clinfl.config.file import load_run_config
from clinfl.config.presets import resolve_defaults
from clinfl.config.secagg_bound import check_roster_size
from clinfl.config.site_fields import DEPLOYED_DATASET, refuse_site_settings

_EXPORT_PLACEHOLDER = Path("site-export")
"""Stands for the sites' exports while the run is checked (a DICOM run names its images); it is
removed before the run is returned, so no coordinator path reaches a site."""


def deployment_run_config(
    path: Path, *, roster_size: int, roster: Path | None = None
) -> RunConfig:
    """Return the run a deployment of ``roster_size`` sites trains from the file at ``path``.

    The run is checked and its defaults resolved; it names no image or label path. With
    ``roster`` (the roster file, named in the message), a roster too small for the file's own
    secure-aggregation bound is refused at once
    (:func:`~clinfl.config.secagg_bound.check_roster_size`), before anything starts.

    Raises:
        ConfigError: if the file cannot be read or is not valid TOML.
        ValidationError: for settings that belong to the sites, and for every invalid value
            (each with its field, value and fix).
        ConfigError: with ``roster``, if the roster has fewer sites than ``min_sites +
            max_colluders``.
    """
    run_config = load_run_config(path)
    refuse_site_settings(run_config, path)
    if roster is not None:
        check_roster_size(run_config.secagg, roster_size, roster=roster)
    data = replace(run_config.data, dataset=DEPLOYED_DATASET, images=_EXPORT_PLACEHOLDER)
    checked = validate_run_config(
        replace(
            run_config,
            data=data,
            federation=replace(run_config.federation, sites=max(roster_size, 1)),
        ),
        known_methods=available_algorithms(),
    )
    resolved = resolve_defaults(checked)
    return replace(resolved, data=replace(resolved.data, images=None, labels=None))
