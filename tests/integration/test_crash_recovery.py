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
    second = run / "checkpoints" / "round-0002.safetensors"
    deadline = time.monotonic() + 300
    while not second.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert second.is_file(), "the run never finished its second round"
    kept = sorted((run / "checkpoints").glob("round-*.safetensors"))
    assert len(kept) < 4, "the run finished before it could be killed"
    before = {path.name: _digest(path) for path in kept}
    finished = _finished_at(run)

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
    for round_number in range(1, len(kept) + 1):
        assert now[round_number] == finished[round_number]
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert [e["round"] for e in manifest["checkpoints"]] == [1, 2, 3, 4]


def test_resume_refuses_run_options_and_unknown_folders(tmp_path: Path) -> None:
    refused = runner.invoke(app, ["simulate", "--resume", str(tmp_path), "--sites", "4"])
    assert refused.exit_code == 2 and "--resume cannot be combined with --sites" in refused.output
    missing = runner.invoke(app, ["simulate", "--resume", str(tmp_path)])
    assert missing.exit_code == 6 and "run_config.json is missing" in missing.output
    assert "Traceback" not in refused.output + missing.output
