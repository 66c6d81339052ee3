"""Rounds a site accepts (SECAGG.md R2, R3', R10): the next round id, few retries, new models.

The last round id of each run, and whether the site completed that round (revealed its unmask
shares, or uploaded in the clear), is persisted at the site (in its ledger), so it survives
restarts and a new join of the same run; a coordinator can neither replay a round nor pick
round ids.

- A run the site has never seen starts wherever the coordinator is (a site may join a run
  late); its ledger shows the run id of every round it trained.
- The last round may be taken again only while the site has not completed it: a coordinator
  that crashed or abandoned the round retries it. The retry trains afresh (fresh randomness)
  and uses fresh keys in a new session (a session nonce the site has never seen, bound into
  every advertisement, so no earlier attempt's advertisement or signature is accepted), and
  its privacy cost is reserved again, so a retry can only over-count. Every retry is audited,
  and the policy's ``secagg.max_retries`` caps them (R3').
- A run may end at most ``secagg.max_abandoned_rounds`` of this site's attempts before the site
  completed them (a coordinator that probes a site with rounds it never completes); past that
  the site refuses the run's rounds, and each abandoned attempt is audited.
- A site sends at most one completed update trained from a given global model in any run (the
  model compared in a canonical form: ``-0.0`` as ``0.0``). Without this, two completed rounds
  on one model, one with this site and one without, would give its update by differencing. So
  after a round that completed at this site but was abandoned by the coordinator, the site sits
  out until the global model changes.
- A round id that skips ahead is refused and audited; the site then takes the new id as its
  last (as done, never retried), so it takes part again from the round after (round ids
  choose nothing in the protocol: the graph and every key are fresh per round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from clinfl.errors import ProtocolViolation


class RoundStore(Protocol):
    """Where a site persists the last round id of each run and its attempts (its ledger)."""

    def last_round(self, run_id: str) -> tuple[int, bool] | None:
        """Return the last round id accepted in ``run_id`` and whether it completed, or None."""
        ...

    def set_last_round(self, run_id: str, round_id: int, *, completed: bool = False) -> None:
        """Persist ``round_id`` as the last one of ``run_id``."""
        ...

    def record_attempt(self, run_id: str, round_id: int, *, model_hash: bytes) -> int:
        """Record one more attempt at ``round_id`` from ``model_hash``; return its number."""
        ...

    def attempts(self, run_id: str, round_id: int) -> int:
        """Return how many attempts at ``round_id`` were recorded."""
        ...

    def use_session(self, run_id: str, round_id: int, session: str) -> bool:
        """Bind ``session`` to the latest attempt at ``round_id``; False if it cannot be used.

        A session nonce is used once in a run, and an attempt takes one session.
        """
        ...

    def complete_attempt(self, run_id: str, round_id: int) -> None:
        """Mark the latest attempt at ``round_id`` completed (its update left the site)."""
        ...

    def contributed(self, model_hash: bytes) -> bool:
        """Return whether a completed attempt (of any run) trained from ``model_hash``."""
        ...

    def abandoned(self, run_id: str) -> int:
        """Return how many attempts of ``run_id`` ended without completing."""
        ...


@dataclass
class _Attempt:
    round_id: int
    model_hash: bytes
    session: str | None = None
    completed: bool = False


class MemoryRoundStore:
    """A round store in memory, for sites without a state directory (tests)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, bool]] = {}
        self._attempts: dict[str, list[_Attempt]] = {}

    def last_round(self, run_id: str) -> tuple[int, bool] | None:
        """Return the last round id accepted in ``run_id`` and whether it completed, or None."""
        return self._last.get(run_id)

    def set_last_round(self, run_id: str, round_id: int, *, completed: bool = False) -> None:
        """Remember ``round_id`` as the last one of ``run_id``."""
        self._last[run_id] = (round_id, completed)

    def record_attempt(self, run_id: str, round_id: int, *, model_hash: bytes) -> int:
        """Record one more attempt at ``round_id``; return its number (1-based)."""
        self._attempts.setdefault(run_id, []).append(_Attempt(round_id, model_hash))
        return self.attempts(run_id, round_id)

    def attempts(self, run_id: str, round_id: int) -> int:
        """Return how many attempts at ``round_id`` were recorded."""
        return sum(a.round_id == round_id for a in self._attempts.get(run_id, []))

    def _latest(self, run_id: str, round_id: int) -> _Attempt | None:
        mine = [a for a in self._attempts.get(run_id, []) if a.round_id == round_id]
        return mine[-1] if mine else None

    def use_session(self, run_id: str, round_id: int, session: str) -> bool:
        """Bind ``session`` to the latest attempt; False if used before or the attempt has one."""
        latest = self._latest(run_id, round_id)
        used = any(a.session == session for run in self._attempts.values() for a in run)
        if latest is None or latest.session is not None or used:
            return False
        latest.session = session
        return True

    def complete_attempt(self, run_id: str, round_id: int) -> None:
        """Mark the latest attempt at ``round_id`` completed."""
        latest = self._latest(run_id, round_id)
        if latest is not None:
            latest.completed = True

    def contributed(self, model_hash: bytes) -> bool:
        """Return whether a completed attempt (of any run) trained from ``model_hash``."""
        return any(
            a.completed and a.model_hash == model_hash
            for run in self._attempts.values()
            for a in run
        )

    def abandoned(self, run_id: str) -> int:
        """Return how many attempts of ``run_id`` ended without completing."""
        return sum(not a.completed for a in self._attempts.get(run_id, []))


def accept_round(
    store: RoundStore,
    *,
    run_id: str,
    round_id: int,
    site_id: str,
    model_hash: bytes,
    max_retries: int,
    max_abandoned: int,
) -> int:
    """Accept ``round_id`` of ``run_id`` from the global model ``model_hash``; return the attempt.

    ``model_hash`` is the canonical hash of the global model
    (:func:`~clinfl.federation.digests.canonical_state_digest`). The round is persisted (not
    yet completed) with one more attempt; attempt 1 is the first try, attempt ``k > 1`` the
    ``k - 1``-th retry of a round this site never completed. Every earlier attempt of the run
    has ended when a new one is accepted; at most ``max_abandoned`` may have ended without
    completing (a coordinator probing with rounds it never completes, R3').

    Raises:
        ProtocolViolation: for a round id that is neither the last one plus one nor a retry of
            an uncompleted last round (a replayed, repeated or skipped round), after recording
            the new id for a skip; for a retry past ``max_retries`` or a run with more than
            ``max_abandoned`` abandoned attempts (R3'); for a global model this site already
            sent a completed update from, in any run (R10: differencing two sums with and
            without this site would otherwise be exact).
    """
    if round_id < 1:
        raise ProtocolViolation(
            f"{site_id} refuses round {round_id}: round ids start at 1",
            remedy="the coordinator must number rounds from 1",
        )
    last = store.last_round(run_id)
    retry = last is not None and last == (round_id, False)
    if last is not None and not retry:
        last_id, completed = last
        if round_id <= last_id:
            raise ProtocolViolation(
                f"{site_id} refuses round {round_id} of run {run_id!r}: it already "
                f"{'completed' if completed else 'took'} round {last_id} (a replayed or "
                "repeated round)",
                remedy="the coordinator must continue with the next round id",
            )
        if round_id != last_id + 1:  # taken as done, so it is not retried as an uncompleted one
            store.set_last_round(run_id, round_id, completed=True)
            raise ProtocolViolation(
                f"{site_id} refuses round {round_id} of run {run_id!r}: the next round id is "
                f"{last_id + 1} (rounds skipped); it takes part again from round {round_id + 1}",
                remedy="the coordinator must number rounds consecutively",
            )
    if retry and store.attempts(run_id, round_id) > max_retries:
        raise ProtocolViolation(
            f"{site_id} refuses a retry of round {round_id} of run {run_id!r}: it was already "
            f"tried {store.attempts(run_id, round_id)} times and the site's policy allows "
            f"{max_retries} retries (secagg.max_retries)",
            remedy="the coordinator must move on; the site takes part again from the next round",
        )
    abandoned = store.abandoned(run_id)
    if abandoned >= max_abandoned:
        raise ProtocolViolation(
            f"{site_id} refuses round {round_id} of run {run_id!r}: {abandoned} attempts of this "
            f"run ended before the site completed them, and its policy allows "
            f"{max_abandoned} (secagg.max_abandoned_rounds)",
            remedy="the site's operator must look at the audit report; a new run needs a new join",
        )
    if store.contributed(model_hash):
        raise ProtocolViolation(
            f"{site_id} refuses round {round_id} of run {run_id!r}: it already sent an update "
            "trained from this global model, and never trains one model twice",
            remedy="the coordinator must send the model that the last completed round produced",
        )
    if not retry:
        store.set_last_round(run_id, round_id)
    return store.record_attempt(run_id, round_id, model_hash=model_hash)


def complete_round(store: RoundStore, *, run_id: str, round_id: int) -> None:
    """Record that this site completed ``round_id`` of ``run_id``: it can never be taken again."""
    store.set_last_round(run_id, round_id, completed=True)
    store.complete_attempt(run_id, round_id)
