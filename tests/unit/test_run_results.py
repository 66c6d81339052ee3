"""``results.json``: one schema for both modes, documented in one place, written atomically."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import torch

from clinfl.config import RunConfig
from clinfl.federation.messages import EvaluationReport, RoundRecord
from clinfl.metrics import MultiLabelMetrics
from coordinator.control import RunControl
from coordinator.results import RunResults, SiteEntry, run_results, write_results
from coordinator.resume import ResumePoint, begin_run, new_run_id
from coordinator.rounds import FederationOutcome

ROOT = Path(__file__).resolve().parents[2]
METRICS = MultiLabelMetrics(0.7, 0.71, 0.4, 0.41, (0.6, 0.8))
RECORD = RoundRecord(1, EvaluationReport(METRICS, METRICS), 1.0, 3, 90, 0.5)
OUTCOME = FederationOutcome((RECORD,), RECORD, {"w": torch.zeros(1)})


def _both_modes() -> tuple[RunResults, RunResults]:
    config = RunConfig()
    simulated = run_results(
        run_id="r",
        mode="simulation",
        config=config,
        outcome=OUTCOME,
        class_names=("a", "b"),
        seconds=1.0,
        sites={"site-1": SiteEntry(policy="p.toml", state_dir="/s")},
        grad_sample_mode="hooks",
        init_weights=None,
        data="90 images",
        partition={"class_names": ["a", "b"]},
        operating={"rule": "f1"},
    )
    deployed = run_results(
        run_id="r",
        mode="deployment",
        config=config,
        outcome=OUTCOME,
        class_names=("a", "b"),
        seconds=1.0,
        sites={
            "site-1": SiteEntry(),
            "site-2": SiteEntry(joined=False, refusal="min sites 2 < policy 5"),
        },
        grad_sample_mode="auto",
        init_weights=None,
    )
    return simulated, deployed


def test_both_modes_write_the_same_keys_and_the_same_best_round(tmp_path: Path) -> None:
    """The deployment's results used to lack data, partition, sites, the per-class AUC and the
    selection rule; the simulation's lacked sites_joined and refusals."""
    simulated, deployed = _both_modes()
    documents = []
    for results in (simulated, deployed):
        folder = tmp_path / results.mode
        folder.mkdir()
        documents.append(json.loads(write_results(folder, results).read_text()))
    assert list(documents[0]) == list(documents[1])
    assert documents[0]["best"].keys() == documents[1]["best"].keys()
    assert documents[1]["best"]["per_class_auc"] == {"a": 0.6, "b": 0.8}
    assert documents[1]["sites_joined"] == ["site-1"]
    assert documents[1]["refusals"] == {"site-2": "min sites 2 < policy 5"}
    assert documents[0]["sites_joined"] == ["site-1"] and documents[0]["refusals"] == {}
    assert sorted(p.name for p in (tmp_path / "simulation").iterdir()) == ["results.json"]


def test_every_results_key_is_documented_in_one_table() -> None:
    text = (ROOT / "docs" / "coordinator.md").read_text()
    section = text.split("## 5. `results.json`", 1)[1]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert documented == [f.name for f in fields(RunResults)]


def test_a_restarted_run_keeps_its_id_and_a_fresh_one_forgets_the_folder(tmp_path: Path) -> None:
    control = RunControl(tmp_path)
    first = new_run_id("fedavg")
    assert re.fullmatch(r"fedavg-\d{8}-\d{6}-[0-9a-f]{6}", first)
    begin_run(control, ResumePoint(1, None, ()), first)
    control.request("stop")
    control.record_round(1, {"round": 1})
    begin_run(control, ResumePoint(2, None, ()), control.run_id() or "")
    assert control.run_id() == first and control.requested() == "run"
    assert [r["round"] for r in control.rounds()] == [1]
    begin_run(control, ResumePoint(1, None, ()), "fedavg-other")
    assert control.run_id() == "fedavg-other" and control.rounds() == []
    control.close()


def test_the_written_document_has_exactly_the_typed_keys(tmp_path: Path) -> None:
    """``ResultsDocument`` (and its nested TypedDicts) names every key the file holds, in order."""
    from clinfl.federation.results_schema import BestRound, ResultsDocument, SiteEntryDocument

    assert list(ResultsDocument.__annotations__) == [f.name for f in fields(RunResults)]
    assert list(SiteEntryDocument.__annotations__) == [f.name for f in fields(SiteEntry)]
    simulated, _ = _both_modes()
    document = json.loads(write_results(tmp_path, simulated).read_text())
    assert list(document) == list(ResultsDocument.__annotations__)
    assert list(document["best"]) == list(BestRound.__annotations__)
    assert list(document["rounds"][0]) == list(RECORD.to_json_dict())
    assert set(document["sites"]["site-1"]) == set(SiteEntryDocument.__annotations__)
