"""Round ids a site accepts (SECAGG.md, "Version 2", R2): exactly the last one plus one.

The last round id of each run, and whether the site completed that round (revealed its unmask
shares, or uploaded in the clear), is persisted at the site (in its ledger), so it survives
restarts and a new join of the same run; a coordinator can neither replay a round nor pick
round ids.

- A run the site has never seen starts wherever the coordinator is (a site may join a run
  late); its ledger shows the run id of every round it trained.
- The last round may be taken again only while the site has not completed it: a coordinator
  that crashed or abandoned the round retries it. The retry trains afresh and uses fresh keys,
  and its privacy cost is reserved again, so a retry can only over-count.
- A round id that skips ahead is refused and audited; the site then takes the new id as its
  last, so it takes part again from the round after (round ids choose nothing in the protocol:
  the graph and every key are fresh per round).
"""

from __future__ import annotations

from typing import Protocol

from clinfl.errors import ProtocolViolation


class RoundStore(Protocol):
    """Where a site persists the last round id of each run (its ledger)."""

    def last_round(self, run_id: str) -> tuple[int, bool] | None:
        """Return the last round id accepted in ``run_id`` and whether it completed, or None."""
        ...

    def set_last_round(self, run_id: str, round_id: int, *, completed: bool = False) -> None:
        """Persist ``round_id`` as the last one of ``run_id``."""
        ...


class MemoryRoundStore:
    """A round store in memory, for sites without a state directory (tests)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, bool]] = {}

    def last_round(self, run_id: str) -> tuple[int, bool] | None:
        """Return the last round id accepted in ``run_id`` and whether it completed, or None."""
        return self._last.get(run_id)

    def set_last_round(self, run_id: str, round_id: int, *, completed: bool = False) -> None:
        """Remember ``round_id`` as the last one of ``run_id``."""
        self._last[run_id] = (round_id, completed)


def accept_round(store: RoundStore, *, run_id: str, round_id: int, site_id: str) -> None:
    """Accept ``round_id`` of ``run_id`` and persist it (not yet completed).

    Raises:
        ProtocolViolation: for a round id that is neither the last one plus one nor a retry of
            an uncompleted last round (a replayed, repeated or skipped round), after recording
            the new id for a skip.
    """
    if round_id < 1:
        raise ProtocolViolation(
            f"{site_id} refuses round {round_id}: round ids start at 1",
            remedy="the coordinator must number rounds from 1",
        )
    last = store.last_round(run_id)
    if last is None:
        store.set_last_round(run_id, round_id)
        return
    last_id, completed = last
    if round_id == last_id and not completed:
        return  # a retry of a round this site never completed
    if round_id <= last_id:
        raise ProtocolViolation(
            f"{site_id} refuses round {round_id} of run {run_id!r}: it already "
            f"{'completed' if completed else 'took'} round {last_id} (a replayed or repeated "
            "round)",
            remedy="the coordinator must continue with the next round id",
        )
    if round_id != last_id + 1:
        store.set_last_round(run_id, round_id)
        raise ProtocolViolation(
            f"{site_id} refuses round {round_id} of run {run_id!r}: the next round id is "
            f"{last_id + 1} (rounds skipped); it takes part again from round {round_id + 1}",
            remedy="the coordinator must number rounds consecutively",
        )
    store.set_last_round(run_id, round_id)


def complete_round(store: RoundStore, *, run_id: str, round_id: int) -> None:
    """Record that this site completed ``round_id`` of ``run_id``: it can never be taken again."""
    store.set_last_round(run_id, round_id, completed=True)
