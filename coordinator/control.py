"""``<run dir>/control.sqlite``: a run's requested state and progress, shared between processes.

The process running the rounds writes its status (state, current round, rounds done, the last
round's metrics, the sites seen and the budget figures they reported) and reads the operator's
requests at every round boundary. ``clinfl coordinator status|pause|resume|stop`` read and
write the same database from another shell. SQLite in WAL mode with a busy timeout lets both
sides work at once; every write is one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

from clinfl.errors import CheckpointError
from clinfl.sqlite_transaction import immediate_transaction

CONTROL_FILE = "control.sqlite"
Request = Literal["run", "pause", "stop", "stop-now"]
REQUESTS: tuple[str, ...] = ("run", "pause", "stop", "stop-now")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, finished_at REAL NOT NULL, record TEXT NOT NULL
);
"""


class RunControl:
    """The control database of one run directory."""

    def __init__(self, run_dir: Path, *, create: bool = True) -> None:
        """Open (or create) ``<run_dir>/control.sqlite``.

        Raises:
            CheckpointError: if ``create`` is False and the run has no control database, or it
                cannot be opened.
        """
        path = run_dir / CONTROL_FILE
        if not create and not path.is_file():
            raise CheckpointError(
                f"{run_dir} has no {CONTROL_FILE}",
                remedy="pass the --run-dir (or simulate --out) folder of a running federation",
            )
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise CheckpointError(
                f"cannot open {path}: {error}", remedy="check the folder's permissions"
            ) from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._db)

    def _get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM control WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set(self, **values: Any) -> None:
        with self._transaction() as db:
            for key, value in values.items():
                db.execute(
                    "INSERT OR REPLACE INTO control (key, value) VALUES (?, ?)",
                    (key, json.dumps(value)),
                )

    def reset(self) -> None:
        """Start a fresh run in this folder: no request, no status, no rounds."""
        with self._transaction() as db:
            db.execute("DELETE FROM control")
            db.execute("DELETE FROM rounds")

    def run_id(self) -> str | None:
        """Return the ID of the run this folder holds (None before one started)."""
        value = self._get("run_id")
        return None if value is None else str(value)

    def set_run_id(self, run_id: str) -> None:
        """Record the ID of the run this folder holds."""
        self._set(run_id=run_id)

    def request(self, action: Request) -> None:
        """Ask the running federation to pause, resume (``run``), stop, or stop now."""
        self._set(request=action, requested_at=time.time())

    def requested(self) -> Request:
        """Return the operator's latest request (``run`` when none was made)."""
        value = self._get("request")
        return "run" if value not in REQUESTS else value

    def set_status(self, state: str, **fields: Any) -> None:
        """Record the federation's state (``running``, ``paused``, ``stopped``, ``finished``)."""
        self._set(state=state, updated_at=time.time(), **fields)

    def record_round(self, round_number: int, record: dict[str, Any]) -> None:
        """Record a finished (or abandoned) round."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds (round, finished_at, record) VALUES (?, ?, ?)",
                (round_number, time.time(), json.dumps(record)),
            )

    def rounds(self) -> list[dict[str, Any]]:
        """Return every recorded round, in order."""
        rows = self._db.execute("SELECT record FROM rounds ORDER BY round").fetchall()
        return [json.loads(row[0]) for row in rows]

    def status(self) -> dict[str, Any]:
        """Return everything ``clinfl coordinator status`` shows."""
        rows = self._db.execute("SELECT key, value FROM control").fetchall()
        status = {key: json.loads(value) for key, value in rows}
        rounds = self.rounds()
        status["rounds_done"] = sum(1 for r in rounds if not r.get("aborted"))
        status["rounds_abandoned"] = sum(1 for r in rounds if r.get("aborted"))
        status["last_round"] = rounds[-1] if rounds else None
        status.setdefault("request", "run")
        return status

    def wait_while_paused(
        self, *, poll_seconds: float = 0.5, sleep: Callable[[float], None] = time.sleep
    ) -> Request:
        """Block while the request is ``pause``; return the request that ended the pause."""
        while (request := self.requested()) == "pause":
            sleep(poll_seconds)
        return request
