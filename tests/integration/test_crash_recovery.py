"""A federation killed mid-run resumes after its last completed round: nothing twice, nothing lost."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from coordinator.control import RunControl

runner = CliRunner()
CONFIG = """
[data]
dataset = "digits"
max_samples = 150
composites_per_pair = 1
rho = 0.6

[method]
name = "fedavg"

[federation]
sites = 3
rounds = 4

[secagg]
min_sites = 2
"""


def _finished_at(run: Path) -> dict[int, float]:
    with sqlite3.connect(run / "control.sqlite") as db:
        return dict(db.execute("SELECT round, finished_at FROM rounds").fetchall())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_killed_run_resumes_after_its_last_checkpoint(tmp_path: Path) -> None:
    config, run = tmp_path / "federation.toml", tmp_path / "run"
    config.write_text(CONFIG)
    command = "from clinfl.cli.app import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", command, "simulate", "--config", str(config), "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def rounds_recorded() -> int:
        try:
            return len(_finished_at(run)) if (run / "control.sqlite").is_file() else 0
        except sqlite3.OperationalError:  # created, schema not written yet
            return 0

    deadline = time.monotonic() + 300
    while rounds_recorded() < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert rounds_recorded() >= 2, "the run never finished its second round"
    listed = json.loads((run / "checkpoints" / "manifest.json").read_text())["checkpoints"]
    finished = _finished_at(run)  # the rounds completed before the kill
    completed = [e["file"] for e in listed if e["round"] in finished]
    assert 2 <= len(completed) < 4, "the run was not killed between its rounds 2 and 4"
    before = {name: _digest(run / "checkpoints" / name) for name in completed}

    result = runner.invoke(app, ["simulate", "--resume", str(run), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3, 4]
    assert summary["best"] is not None
    after = sorted((run / "checkpoints").glob("round-*.safetensors"))
    assert [p.name for p in after] == [f"round-{k:04d}.safetensors" for k in (1, 2, 3, 4)]
    for name, digest in before.items():  # nothing applied twice
        assert _digest(run / "checkpoints" / name) == digest
    now = _finished_at(run)
    for round_number, finished_at in finished.items():
        assert now[round_number] == finished_at
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert [e["round"] for e in manifest["checkpoints"]] == [1, 2, 3, 4]
    # the resumed run is the same run (as a restarted deployment is): it kept its ID, so the
    # sites' ledgers name one run, the one results.json names (it used to get a new ID)
    for site in ("site-1", "site-2", "site-3"):
        with sqlite3.connect(run / "sites" / site / "ledger.sqlite") as db:
            run_ids = {row[0] for row in db.execute("SELECT run_id FROM round_ids")}
        assert run_ids == {summary["run_id"]}


def test_resume_refuses_run_options_and_unknown_folders(tmp_path: Path) -> None:
    refused = runner.invoke(app, ["simulate", "--resume", str(tmp_path), "--sites", "4"])
    assert refused.exit_code == 2 and "--resume cannot be combined with --sites" in refused.output
    missing = runner.invoke(app, ["simulate", "--resume", str(tmp_path)])
    assert missing.exit_code == 6 and "run_config.json is missing" in missing.output
    assert "Traceback" not in refused.output + missing.output


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = "from clinfl.cli.app import main; main()"
    return subprocess.run(
        [sys.executable, "-c", command, *args], capture_output=True, text=True, timeout=120
    )


def _status(run: Path) -> dict:
    """Read the status as `clinfl coordinator status` does (polling through the CLI is slow)."""
    control = RunControl(run, create=False)
    try:
        return control.status()
    finally:
        control.close()


def _wait_for(predicate, what: str, seconds: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.slow
def test_pause_resume_and_stop_from_another_process(tmp_path: Path) -> None:
    config, run = tmp_path / "federation.toml", tmp_path / "run"
    config.write_text(CONFIG.replace("rounds = 4", "rounds = 30"))
    command = "from clinfl.cli.app import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", command, "simulate", "--config", str(config), "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: (run / "control.sqlite").is_file(), "the control database")
        _wait_for(lambda: _status(run)["rounds_done"] >= 1, "the first round")
        assert _cli("coordinator", "pause", "--run-dir", str(run)).returncode == 0
        _wait_for(lambda: _status(run)["state"] == "paused", "the pause")
        paused_at = _status(run)["rounds_done"]
        time.sleep(3)
        assert _status(run)["rounds_done"] == paused_at  # nothing runs while paused
        assert _cli("coordinator", "resume", "--run-dir", str(run)).returncode == 0
        _wait_for(lambda: _status(run)["rounds_done"] > paused_at, "a round after resuming")
        assert _cli("coordinator", "stop", "--run-dir", str(run)).returncode == 0
        assert process.wait(timeout=300) == 0
    finally:
        if process.poll() is None:
            process.kill()
    shown = _cli("coordinator", "status", "--run-dir", str(run), "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["state"] == "stopped" and "stopped by the operator" in status["stopped"]
    results = json.loads((run / "results.json").read_text())
    assert "stopped by the operator" in results["stopped"]
    assert len(results["rounds"]) == status["rounds_done"] < 30
    late = _cli("coordinator", "pause", "--run-dir", str(run))
    assert late.returncode == 0 and "already stopped" in late.stderr
