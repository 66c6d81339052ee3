"""One write transaction on an autocommit SQLite connection (the ledger and the control DB)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in ``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception.

    ``db`` must be opened with ``isolation_level=None``. The write lock is taken at the start,
    so concurrent writers wait (up to the connection's timeout) instead of failing mid-way.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
