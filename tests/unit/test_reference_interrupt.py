"""Stopping the reference benchmark stops its workers and keeps the invocation's wall time."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.accuracy import load_results, save_results
from benchmarks.reference import Cell, Settings, record_invocation, run_cells
from benchmarks.reference_report import wall_time_line
from tests.support.slow_cell import MARKER_ENV, slow_cell


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a finished child that is not yet reaped is not running
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


@pytest.fixture
def default_ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, as in a fresh process (an earlier test in this process,
    or a library it ran, may have installed its own SIGINT handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_stops_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_ctrl_c: None
) -> None:
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    results = tmp_path / "results.json"
    save_results(results, {"runs": [], "throughput": [], "machine": {}})
    args = argparse.Namespace(workers=2, threads=2, results=results)
    cells = [Cell("main", "digits", "s1", "fedavg", seed) for seed in range(4)]

    def interrupt_once_started() -> None:
        deadline = time.monotonic() + 120
        while len([p for p in tmp_path.iterdir() if p.name.isdigit()]) < 2:
            if time.monotonic() > deadline:  # the workers never started: fail, do not hang
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C or SIGTERM would reach the main process

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_cells(cells, Settings(), args, choices={}, runner=slow_cell)
    pids = [int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert len(pids) == 2
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "a worker kept running its cell"
    assert load_results(results)["runs"] == []  # no cell finished, none recorded


def test_an_interrupted_invocation_is_recorded_and_reported(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    save_results(results, {"runs": [{"key": "a"}, {"key": "b"}], "throughput": []})
    args = argparse.Namespace(workers=2, stage="tune,main", results=results)
    record_invocation(args, "2026-12-06T23:00:00Z", 3600.0, 1, interrupted=True)
    record_invocation(args, "2026-12-07T01:00:00Z", 1800.0, 2, interrupted=False)
    invocations = load_results(results)["invocations"]
    assert invocations[0] == {
        "started": "2026-12-06T23:00:00Z",
        "seconds": 3600.0,
        "cells": 1,
        "stages": "tune,main",
        "workers": 2,
        "interrupted": True,
    }
    assert "interrupted" not in invocations[1]
    line = wall_time_line({"invocations": invocations})
    assert "1.50 h" in line and "1.00 h, 1 cells, stages tune,main, 2 workers, interrupted" in line
