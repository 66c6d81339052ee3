"""Continuing a federation after its process died: the saved config and the last good round.

A run saves its resolved configuration as ``<run dir>/run_config.json`` before the first round
(paths made absolute). Every round's checkpoint and full record are written as the round ends
(``checkpoints/`` and ``control.sqlite``). ``clinfl simulate --resume DIR`` reads them back and
continues after the last round with a checkpoint: rounds already applied are never applied
again, and a round cut off by the crash runs again from the same global state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinfl.config import RunConfig
from clinfl.config_file import run_config_from_mapping
from clinfl.errors import CheckpointError
from clinfl.federation.messages import RoundRecord
from clinfl.typing import StateDict
from coordinator.checkpoints import CheckpointStore, write_atomically
from coordinator.control import RunControl

CONFIG_FILE = "run_config.json"
PATH_KEYS = frozenset({"images", "labels", "split_dir", "weights", "policy", "policy_dir"})


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
    write_atomically(out_dir / CONFIG_FILE, json.dumps(document, indent=2).encode())


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


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts: the first round to run, its global state, earlier records."""

    first_round: int
    state: StateDict | None
    previous: tuple[RoundRecord, ...]


def resume_point(store: CheckpointStore, control: RunControl) -> ResumePoint:
    """Return the round after the last completed one, with that round's checkpoint.

    A round is completed when its checkpoint is in the manifest and its record is in the
    control database (written in that order); a crash between the two runs the round again.

    Raises:
        CheckpointError: if the checkpoint cannot be read.
    """
    records = {int(r["round"]): r for r in control.rounds()}
    last = min(store.last_round() or 0, max(records, default=0))
    if last == 0:
        return ResumePoint(first_round=1, state=None, previous=())
    previous = tuple(
        RoundRecord.from_full_json_dict(records[r]) for r in sorted(records) if r <= last
    )
    return ResumePoint(first_round=last + 1, state=store.load(last), previous=previous)
