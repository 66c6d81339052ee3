"""Continuing a federation after its process died: the saved config and the last good round.

A run saves its resolved configuration as ``<run dir>/run_config.json`` before the first round
(paths made absolute). Every round's checkpoint and full record are written as the round ends
(``checkpoints/`` and ``control.sqlite``). ``clinfl simulate --resume DIR`` reads them back and
continues after the last round with a checkpoint: rounds already applied are never applied
again, and a round cut off by the crash runs again from the same global state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clinfl.config import RunConfig
from clinfl.config.file import run_config_from_mapping
from clinfl.errors import CheckpointError
from clinfl.files import write_json
from coordinator.resume import ResumePoint, resume_point

__all__ = ["ResumePoint", "load_saved_run_config", "resume_point", "save_run_config"]

CONFIG_FILE = "run_config.json"
PATH_KEYS = frozenset({"images", "labels", "split_dir", "init_weights", "policy", "policy_dir"})


def _portable(value: Any, key: str = "") -> Any:
    """Drop unset (None) fields and make paths absolute, so the file loads anywhere."""
    if isinstance(value, dict):
        return {k: _portable(v, k) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if key in PATH_KEYS and isinstance(value, str):
        return str(Path(value).resolve())
    return value


def save_run_config(out_dir: Path, config: RunConfig) -> None:
    """Write the run's configuration for a later ``--resume``.

    Raises:
        CheckpointError: if the file cannot be written.
    """
    document = _portable(config.to_json_dict())
    write_json(out_dir / CONFIG_FILE, document)


def load_saved_run_config(out_dir: Path) -> RunConfig:
    """Read the configuration a run saved.

    Raises:
        CheckpointError: if the run folder has no readable saved configuration.
        ValidationError: if it no longer fits this version of clinfl.
    """
    path = out_dir / CONFIG_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CheckpointError(
            f"{path} is missing or unreadable",
            remedy="resume a folder that `clinfl simulate` wrote",
        ) from None
    return run_config_from_mapping(document, base=out_dir)
