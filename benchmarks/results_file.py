"""A benchmark's results file and its cells' child processes, shared by the drivers.

The X-ray and privacy-utility benchmarks (``benchmarks/xray.py``, ``benchmarks/privacy_utility.py``)
keep one JSON file each: ``runs`` (one record per cell, keyed by ``key``; a failed cell holds
``error`` and is rerun next time), ``invocations`` (one per driver run) and ``machine``. Each cell
runs in a child process of its own (the driver script again, with ``--cell KEY --record FILE``),
so a crash, even one that kills its interpreter, costs only that cell.

This module imports no driver and no report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load_results(path: Path) -> dict[str, Any]:
    """Return the results file's content (an empty one if absent).

    Raises:
        json.JSONDecodeError: for a results file that is not JSON.
    """
    if path.is_file():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {"runs": [], "invocations": []}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write the results file atomically (its folder is made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)


def record_run(path: Path, record: dict[str, Any], **fields: Any) -> None:
    """Put ``record`` in the results file in place of any earlier run of its cell.

    ``fields`` are top-level entries written with it (the benchmark's recipe). The file is read
    again first, so what another writer saved meanwhile is kept.
    """
    results = load_results(path)
    results["runs"] = [r for r in results["runs"] if r["key"] != record["key"]]
    results["runs"].append(record)
    results.update(fields)
    save_results(path, results)


def record_invocation(path: Path, invocation: dict[str, Any]) -> None:
    """Append ``invocation`` (when, how long, with what) and this machine to the results file."""
    from benchmarks.machine import machine_info  # torch: only once cells have run

    results = load_results(path)
    results.setdefault("invocations", []).append(invocation)
    results["machine"] = machine_info()
    save_results(path, results)


def run_cell_process(script: Path, key: str, threads: int) -> dict[str, Any]:
    """Run the cell ``key`` with ``script --cell key`` in a child process; return its record.

    A crash of the cell is recorded as its error, with the end of its output; the child imports
    this checkout (``PYTHONPATH``).
    """
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "record.json"
        command = [sys.executable, str(script), "--cell", key, "--record", str(out)]
        command += ["--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode == 0 and out.is_file():
            record: dict[str, Any] = json.loads(out.read_text())
            return record
    tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
    return {"key": key, "error": f"exit {done.returncode}: {' | '.join(tail)}"}
