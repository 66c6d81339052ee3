"""Where a run continues after its process died: the round after the last completed one."""

from __future__ import annotations

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
