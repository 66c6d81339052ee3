"""Round control from another shell: pause, resume, stop, stop --now, status, checkpoints."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.errors import CheckpointError
from clinfl.federation.messages import EvaluationReport, RoundSettings
from clinfl.metrics import MultiLabelMetrics
from clinfl.secagg.settings import SecAggRequirements
from coordinator.aggregation import PlainAggregator
from coordinator.checkpoints import CheckpointStore
from coordinator.control import RunControl
from coordinator.rounds import Coordinator
from tests.support.federation import make_agents, random_deltas

runner = CliRunner()
TEMPLATE = {"w": torch.zeros(6)}
METRICS = MultiLabelMetrics(0.7, 0.7, 0.1, 0.1, (0.7,))


class Evaluator:
    def evaluate(self, global_state: dict[str, torch.Tensor]) -> EvaluationReport:
        return EvaluationReport(METRICS, METRICS)


class OnTraining:
    """A participant that runs ``action`` when it trains in ``round_number``."""

    def __init__(self, inner: object, round_number: int, action: object) -> None:
        self._inner, self._round, self._action = inner, round_number, action

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def train_round(self, state: dict[str, torch.Tensor], settings: RoundSettings) -> object:
        if settings.round == self._round:
            self._action()  # type: ignore[operator]
        return self._inner.train_round(state, settings)  # type: ignore[attr-defined]


def _coordinator(tmp_path: Path, control: RunControl, round_number: int, action: object):
    agents = make_agents(
        random_deltas(3, TEMPLATE), [10, 20, 30], requirements=SecAggRequirements(required=False)
    )
    participants = [OnTraining(agents[0], round_number, action), *agents[1:]]
    return Coordinator(
        participants,  # type: ignore[arg-type]
        PlainAggregator(),
        Evaluator(),
        CheckpointStore(tmp_path),
        control=control,
    )


def _run(coordinator: Coordinator, rounds: int = 3):
    return coordinator.run(
        TEMPLATE,
        rounds=rounds,
        settings_for=lambda r: RoundSettings(round=r, local_epochs=1, batch_size=8, lr=1e-3),
    )


def test_stop_takes_effect_at_the_next_round_boundary(tmp_path: Path) -> None:
    control = RunControl(tmp_path)
    outcome = _run(_coordinator(tmp_path, control, 2, lambda: control.request("stop")))
    assert [r.round for r in outcome.records] == [1, 2]
    assert all(r.aborted is None for r in outcome.records)
    assert outcome.stopped == "stopped by the operator before round 3"
    status = control.status()
    assert status["state"] == "stopped" and status["rounds_done"] == 2


def test_stop_now_abandons_the_round_in_progress_and_applies_nothing(tmp_path: Path) -> None:
    control = RunControl(tmp_path)
    outcome = _run(_coordinator(tmp_path, control, 2, lambda: control.request("stop-now")))
    first, second = outcome.records
    assert first.aborted is None and second.aborted is not None and "stop --now" in second.aborted
    assert torch.equal(
        outcome.final_state["w"], CheckpointStore(tmp_path, resume=True).load(1)["w"]
    )
    assert not torch.equal(outcome.final_state["w"], TEMPLATE["w"])
    assert "during round 2" in (outcome.stopped or "")
    assert control.status()["rounds_abandoned"] == 1


def test_pause_waits_at_the_boundary_until_resumed(tmp_path: Path) -> None:
    control = RunControl(tmp_path)
    seen: list[str] = []

    def operator() -> None:  # another shell: watch the pause, then resume
        observer = RunControl(tmp_path, create=False)
        deadline = time.monotonic() + 20
        while observer.status().get("state") != "paused" and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append(str(observer.status().get("state")))
        seen.append(str(observer.status()["rounds_done"]))
        observer.request("run")
        observer.close()

    thread = threading.Thread(target=operator)
    coordinator = _coordinator(
        tmp_path, control, 1, lambda: (control.request("pause"), thread.start())
    )
    outcome = _run(coordinator)
    thread.join(timeout=30)
    assert seen == ["paused", "1"]
    assert [r.round for r in outcome.records] == [1, 2, 3] and outcome.stopped is None
    assert control.status()["state"] == "finished"


def test_status_and_requests_from_the_cli(tmp_path: Path) -> None:
    control = RunControl(tmp_path)
    control.set_status(
        "running", current_round=2, total_rounds=5, sites=["site-1"], budgets={"site-1": 1.25}
    )
    control.record_round(
        1, {"round": 1, "macro_auc": 0.7, "val_macro_auc": 0.71, "sites": 3, "aborted": None}
    )
    shown = runner.invoke(app, ["coordinator", "status", "--run-dir", str(tmp_path), "--json"])
    assert shown.exit_code == 0, shown.output
    status = json.loads(shown.stdout)
    assert status["current_round"] == 2 and status["budgets"] == {"site-1": 1.25}
    assert status["rounds_done"] == 1
    table = runner.invoke(app, ["coordinator", "status", "--run-dir", str(tmp_path)])
    assert "site-1 epsilon spent" in table.output and "1.250" in table.output
    for command, expected in (("pause", "pause"), ("resume", "run"), ("stop", "stop")):
        result = runner.invoke(app, ["coordinator", command, "--run-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert control.requested() == expected
    now = runner.invoke(app, ["coordinator", "stop", "--now", "--run-dir", str(tmp_path)])
    assert now.exit_code == 0 and control.requested() == "stop-now"
    missing = runner.invoke(app, ["coordinator", "status", "--run-dir", str(tmp_path / "no")])
    assert missing.exit_code == 6 and "no control.sqlite" in missing.output
    assert "Traceback" not in missing.output


def test_checkpoint_store_resumes_its_manifest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, TEMPLATE, {"round": 1})
    store.save(2, {"w": torch.ones(6)}, {"round": 2})
    again = CheckpointStore(tmp_path, resume=True)
    assert again.last_round() == 2
    again.save(3, TEMPLATE, {"round": 3})
    manifest = json.loads((tmp_path / "checkpoints" / "manifest.json").read_text())
    assert [e["round"] for e in manifest["checkpoints"]] == [1, 2, 3]
    assert CheckpointStore(tmp_path).last_round() is None  # a fresh run starts over
    (tmp_path / "checkpoints" / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        CheckpointStore(tmp_path, resume=True)


def test_a_round_checkpointed_but_not_recorded_runs_again(tmp_path: Path) -> None:
    from clinfl.simulation.resume import resume_point

    control = RunControl(tmp_path)
    outcome = _run(_coordinator(tmp_path, control, 99, lambda: None), rounds=2)
    store = CheckpointStore(tmp_path, resume=True)
    store.save(3, outcome.final_state, {"round": 3})  # the crash came before its record
    point = resume_point(store, control)
    assert point.first_round == 3 and [r.round for r in point.previous] == [1, 2]
    assert point.previous[1].report == outcome.records[1].report
    assert point.state is not None and torch.equal(point.state["w"], outcome.final_state["w"])
