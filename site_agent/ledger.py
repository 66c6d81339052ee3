"""The site's privacy ledger: a crash-safe SQLite record of every round's privacy spend.

Protocol (PRIVACY.md): before training, compute the epsilon the round would bring the site to;
over budget, record a refusal and refuse. Otherwise write the round as ``reserved`` and commit,
then train. After the update is sent, mark it ``spent``. Only a round that never took a training
step may be ``released``. A crash leaves ``reserved``, which counts as spent, so the ledger never
under-counts. The database runs in WAL mode with full synchronous commits.

Each round row records the accountant that charged it: the policy's, except that a ``prv``
policy's round PRV cannot compute is charged by RDP and recorded ``rdp``
(:func:`clinfl.privacy.accounting.charge_epsilon`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from clinfl.errors import BudgetExhausted, CheckpointError
from clinfl.guards import present
from clinfl.privacy.accounting import HistoryEntry, charge_epsilon, epsilon_of
from clinfl.sqlite_transaction import immediate_transaction

LEDGER_FILE = "ledger.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'spent', 'released')),
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    accountant TEXT NOT NULL,
    delta REAL NOT NULL,
    epsilon REAL NOT NULL,
    history TEXT NOT NULL,
    grad_sample_mode TEXT NOT NULL,
    secagg INTEGER,
    sites_in_sum INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    reason TEXT NOT NULL,
    epsilon_spent REAL,
    epsilon_requested REAL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS round_ids (
    run_id TEXT PRIMARY KEY,
    last_round INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    model_hash TEXT NOT NULL,
    session TEXT UNIQUE,
    completed INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    model_hash TEXT NOT NULL,
    session TEXT UNIQUE,
    epsilon REAL,
    at REAL NOT NULL,
    UNIQUE (run_id, round)
);
"""


@dataclass(frozen=True)
class Reservation:
    """A reserved round: its ledger row and the cumulative epsilon it brings the site to."""

    row_id: int
    epsilon_after: float


@dataclass(frozen=True)
class LedgerRound:
    """One row of the ledger, as reports show it."""

    run_id: str
    round: int
    state: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    delta: float
    epsilon: float
    grad_sample_mode: str
    secagg: bool | None
    sites_in_sum: int | None


@dataclass(frozen=True)
class EvaluationRelease:
    """One federated evaluation the site scored a model for (its own line, apart from DP-SGD).

    ``epsilon`` is the pure-DP epsilon of the evaluation noise the site added to its counts
    (``reporting.evaluation_epsilon``; None: no noise). It is charged once per evaluation,
    whether or not the session that follows completes.
    """

    run_id: str
    round: int
    epsilon: float | None


@dataclass(frozen=True)
class Refusal:
    """A round the site refused, and why."""

    run_id: str
    round: int
    reason: str
    epsilon_spent: float | None
    epsilon_requested: float | None


class SiteLedger:
    """The ledger in ``<state dir>/ledger.sqlite``; see the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        """Open (or create) the ledger.

        Raises:
            CheckpointError: if the state directory or database cannot be opened.
        """
        self.path = state_dir / LEDGER_FILE
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise CheckpointError(
                f"cannot open the privacy ledger {self.path}: {error}",
                remedy="check that the site state directory is writable",
            ) from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db)

    def set_meta(self, key: str, value: str) -> None:
        """Record a fact about the site (its id, its policy's hash)."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def last_round(self, run_id: str) -> tuple[int, bool] | None:
        """Return the last round id accepted in ``run_id`` and whether the site completed it."""
        row = self._db.execute(
            "SELECT last_round, completed FROM round_ids WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else (int(row[0]), bool(row[1]))

    def set_last_round(self, run_id: str, round_id: int, *, completed: bool = False) -> None:
        """Persist ``round_id`` as the last round id of ``run_id`` (survives restarts)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO round_ids (run_id, last_round, completed) VALUES (?, ?, ?)",
                (run_id, round_id, int(completed)),
            )

    def record_attempt(self, run_id: str, round_id: int, *, model_hash: bytes) -> int:
        """Record one more attempt at ``round_id`` from ``model_hash``; return its number."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO attempts (run_id, round, model_hash, at) VALUES (?, ?, ?, ?)",
                (run_id, round_id, model_hash.hex(), time.time()),
            )
        return self.attempts(run_id, round_id)

    def attempts(self, run_id: str, round_id: int) -> int:
        """Return how many attempts at ``round_id`` of ``run_id`` were recorded."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ? AND round = ?", (run_id, round_id)
        ).fetchone()
        return int(row[0])

    def use_session(self, run_id: str, round_id: int, session: str) -> bool:
        """Bind ``session`` to the latest attempt at ``round_id``; False if it cannot be used.

        A session nonce is used once (in any run), and an attempt takes one session.
        """
        with self._transaction() as db:
            latest = db.execute(
                "SELECT id, session FROM attempts WHERE run_id = ? AND round = ? "
                "ORDER BY id DESC LIMIT 1",
                (run_id, round_id),
            ).fetchone()
            seen = db.execute("SELECT 1 FROM attempts WHERE session = ?", (session,)).fetchone()
            if latest is None or latest[1] is not None or seen is not None:
                return False
            db.execute("UPDATE attempts SET session = ? WHERE id = ?", (session, latest[0]))
        return True

    def complete_attempt(self, run_id: str, round_id: int) -> None:
        """Mark the latest attempt at ``round_id`` of ``run_id`` completed."""
        with self._transaction() as db:
            db.execute(
                "UPDATE attempts SET completed = 1 WHERE id = (SELECT MAX(id) FROM attempts "
                "WHERE run_id = ? AND round = ?)",
                (run_id, round_id),
            )

    def contributed(self, model_hash: bytes) -> bool:
        """Return whether a completed attempt (of any run) trained from ``model_hash``."""
        row = self._db.execute(
            "SELECT 1 FROM attempts WHERE model_hash = ? AND completed = 1", (model_hash.hex(),)
        ).fetchone()
        return row is not None

    def abandoned(self, run_id: str) -> int:
        """Return how many attempts of ``run_id`` ended without completing."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ? AND completed = 0", (run_id,)
        ).fetchone()
        return int(row[0])

    def claim_evaluation(
        self, run_id: str, round_id: int, *, model_hash: bytes, epsilon: float | None
    ) -> str | None:
        """Record that the site scores ``model_hash`` for round ``round_id``; None if it may.

        A site scores at most one model per round of a run and never one model twice (in any
        run): two evaluation sums over one model with different survivor sets would give this
        site's histograms by differencing. The row (with the epsilon its noise costs) is written
        before anything is scored, so a crash can only over-count. Returns why not, otherwise.
        """
        with self._transaction() as db:
            again = db.execute(
                "SELECT 1 FROM evaluations WHERE run_id = ? AND round = ?", (run_id, round_id)
            ).fetchone()
            if again is not None:
                return f"it already scored a model for round {round_id} of this run"
            twice = db.execute(
                "SELECT 1 FROM evaluations WHERE model_hash = ?", (model_hash.hex(),)
            ).fetchone()
            if twice is not None:
                return "it already scored this global model"
            db.execute(
                "INSERT INTO evaluations (run_id, round, model_hash, epsilon, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, round_id, model_hash.hex(), epsilon, time.time()),
            )
        return None

    def use_evaluation_session(self, run_id: str, round_id: int, session: str) -> bool:
        """Bind ``session`` to the evaluation of ``round_id``; False if it cannot be used.

        An evaluation takes one session, and an evaluation session nonce is used once.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, session FROM evaluations WHERE run_id = ? AND round = ?",
                (run_id, round_id),
            ).fetchone()
            seen = db.execute("SELECT 1 FROM evaluations WHERE session = ?", (session,)).fetchone()
            if row is None or row[1] is not None or seen is not None:
                return False
            db.execute("UPDATE evaluations SET session = ? WHERE id = ?", (session, row[0]))
        return True

    def evaluations(self) -> list[EvaluationRelease]:
        """Return every evaluation the site scored, oldest first."""
        rows = self._db.execute(
            "SELECT run_id, round, epsilon FROM evaluations ORDER BY id"
        ).fetchall()
        return [
            EvaluationRelease(r[0], int(r[1]), None if r[2] is None else float(r[2])) for r in rows
        ]

    def completed_rounds(self) -> int:
        """Return how many rounds (of any run) the site completed: its update was revealed.

        Every site records its attempts, with DP-SGD or without, so this counts the rounds a
        site without DP trained, which write no privacy rows.
        """
        row = self._db.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT run_id, round FROM attempts WHERE completed = 1)"
        ).fetchone()
        return int(row[0])

    def meta(self) -> dict[str, str]:
        """Return the recorded facts."""
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def history(self) -> list[HistoryEntry]:
        """Return the accountant history of every round that is not released."""
        rows = self._db.execute(
            "SELECT noise_multiplier, sample_rate, steps FROM rounds "
            "WHERE state != 'released' ORDER BY id"
        ).fetchall()
        return [(float(s), float(q), int(n)) for s, q, n in rows]

    def epsilon(self, *, delta: float, accountant: str) -> float:
        """Return the epsilon spent so far (reserved rounds count as spent)."""
        return epsilon_of(self.history(), delta=delta, accountant=accountant)

    def reserve(
        self,
        *,
        run_id: str,
        round_number: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        budget: float,
        delta: float,
        accountant: str,
        grad_sample_mode: str,
    ) -> Reservation:
        """Reserve a round's privacy spend before any training step.

        The round is charged by ``accountant`` over the whole history (by RDP where a ``prv``
        history cannot be computed by PRV); the row records the accountant that charged it.

        Raises:
            BudgetExhausted: if the round would take the site past ``budget``; the refusal is
                recorded first.
        """
        with self._transaction() as db:
            history = self.history()
            entry = (noise_multiplier, sample_rate, steps)
            charge = charge_epsilon([*history, entry], delta=delta, accountant=accountant)
            after = charge.epsilon
            now = time.time()
            if after > budget:
                spent = epsilon_of(history, delta=delta, accountant=accountant)
                reason = (
                    f"round {round_number}: it would bring epsilon to {after:.3f} at delta "
                    f"{delta:g}, past the budget {budget:g} (spent so far {spent:.3f})"
                )
                db.execute(
                    "INSERT INTO refusals (run_id, round, reason, epsilon_spent, "
                    "epsilon_requested, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, round_number, reason, spent, after, now),
                )
            else:
                cursor = db.execute(
                    "INSERT INTO rounds (run_id, round, state, noise_multiplier, sample_rate, "
                    "steps, accountant, delta, epsilon, history, grad_sample_mode, created_at, "
                    "updated_at) VALUES (?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        round_number,
                        noise_multiplier,
                        sample_rate,
                        steps,
                        charge.accountant,
                        delta,
                        after,
                        json.dumps([*history, entry]),
                        grad_sample_mode,
                        now,
                        now,
                    ),
                )
        if after > budget:
            raise BudgetExhausted(
                f"refuses {reason}",
                remedy="the site has spent its privacy budget for this federation",
            )
        row_id = present(cursor.lastrowid, "the reservation's ledger row")
        return Reservation(row_id=row_id, epsilon_after=after)

    def _set_state(self, row_id: int, state: str, *, only_from: str, **fields: object) -> None:
        assignments = "".join(f", {name} = ?" for name in fields)
        with self._transaction() as db:
            db.execute(
                f"UPDATE rounds SET state = ?, updated_at = ?{assignments} "
                "WHERE id = ? AND state = ?",
                (state, time.time(), *fields.values(), row_id, only_from),
            )

    def spend(self, row_id: int, *, secagg: bool, sites_in_sum: int | None = None) -> None:
        """Mark a reserved round as spent (its update was sent)."""
        self._set_state(
            row_id, "spent", only_from="reserved", secagg=int(secagg), sites_in_sum=sites_in_sum
        )

    def record_sum(self, row_id: int, *, sites_in_sum: int) -> None:
        """Record how many sites the round's aggregate covered (when the site learns it)."""
        with self._transaction() as db:
            db.execute("UPDATE rounds SET sites_in_sum = ? WHERE id = ?", (sites_in_sum, row_id))

    def release(self, row_id: int) -> None:
        """Release a reserved round that never took a training step."""
        self._set_state(row_id, "released", only_from="reserved")

    def record_refusal(self, *, run_id: str, round_number: int, reason: str) -> None:
        """Record a round the site refused for a reason other than its budget."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO refusals (run_id, round, reason, at) VALUES (?, ?, ?, ?)",
                (run_id, round_number, reason, time.time()),
            )

    def rounds(self) -> list[LedgerRound]:
        """Return every round row, oldest first."""
        rows = self._db.execute(
            "SELECT run_id, round, state, noise_multiplier, sample_rate, steps, accountant, "
            "delta, epsilon, grad_sample_mode, secagg, sites_in_sum FROM rounds ORDER BY id"
        ).fetchall()
        return [
            LedgerRound(
                run_id=row[0],
                round=row[1],
                state=row[2],
                noise_multiplier=row[3],
                sample_rate=row[4],
                steps=row[5],
                accountant=row[6],
                delta=row[7],
                epsilon=row[8],
                grad_sample_mode=row[9],
                secagg=None if row[10] is None else bool(row[10]),
                sites_in_sum=row[11],
            )
            for row in rows
        ]

    def refusals(self) -> list[Refusal]:
        """Return every refusal, oldest first."""
        rows = self._db.execute(
            "SELECT run_id, round, reason, epsilon_spent, epsilon_requested FROM refusals "
            "ORDER BY id"
        ).fetchall()
        return [Refusal(*row) for row in rows]
