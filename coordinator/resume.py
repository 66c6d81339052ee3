"""Starting or continuing a run, the same in both modes: its ID, its control state, its round.

A run that died continues after its last completed round, under the same ID.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from clinfl.federation.messages import RoundRecord
from clinfl.typing import StateDict
from coordinator.checkpoints import CheckpointStore
from coordinator.control import RunControl


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


def new_run_id(method: str) -> str:
    """Return a new run's ID: ``METHOD-YYYYmmdd-HHMMSS-xxxxxx`` (six random hex digits)."""
    return f"{method}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def begin_run(control: RunControl, point: ResumePoint, run_id: str) -> None:
    """Ready the run folder's control database for a run (re)starting at ``point``.

    A run starting at its first round forgets what the database held (status, requests, round
    records); every start clears a request left from before (a pause or stop asked before a
    crash does not carry over). The run's ID is kept there, so a restart continues it.
    """
    if point.first_round == 1:
        control.reset()
    control.request("run")
    control.set_run_id(run_id)
