"""A cell runner for the reference benchmark's interrupt test: it marks that it started, then
waits far longer than the test (spawned workers import it by name, so it lives in a module)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

MARKER_ENV = "CLINFL_TEST_CELL_MARKER"


def slow_cell(cell: Any, settings: Any, choices: Any, threads: int) -> dict[str, Any]:
    """Write this worker's pid to the marker folder, then sleep for ten minutes."""
    folder = Path(os.environ[MARKER_ENV])
    (folder / str(os.getpid())).write_text(cell.key)
    time.sleep(600)
    return {"key": cell.key}
