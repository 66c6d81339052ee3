"""``clinfl simulate --cv`` end to end on tiny digits: federated, local-only, resume, compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.crossval.predictions import OofPredictions

runner = CliRunner()
TINY = [
    "simulate", "--cv", "2", "--max-samples", "60", "--composites-per-pair", "1",
    "--rounds", "1", "--width", "8", "--sites", "2", "--secagg", "off", "--batch-size", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cv")
    out = {}
    for name, extra in (("federated", []), ("local", ["--training", "local"])):
        result = runner.invoke(app, [*TINY, *extra, "--out", str(root / name)])
        assert result.exit_code == 0, result.output
        assert "learnable-class macro-AUC" in result.output  # the printed table
        out[name] = root / name
    return out


def test_cv_writes_pooled_report_and_predictions(runs: dict[str, Path]) -> None:
    report = json.loads((runs["federated"] / "cv.json").read_text())
    assert report["protocol"]["folds"] == 2 and report["protocol"]["scored_images"] == 60
    assert report["rows"]["no-skill"]["all_class_macro_auc"]["value"] == 0.5
    assert report["rows"]["model"]["all_class_macro_auc"]["value"] is not None
    assert set(report["per_site"]) == {"site-1", "site-2"}
    for fold in (1, 2):
        assert (runs["federated"] / f"fold-{fold}" / "results.json").is_file()
    oof = OofPredictions.load(runs["federated"] / "oof.npz")
    assert oof.scored.all() and sorted(set(oof.folds.tolist())) == [0, 1]
    for patient in np.unique(oof.patients):
        assert np.unique(oof.folds[oof.patients == patient]).size == 1


def test_local_only_scores_each_site_with_its_own_model(runs: dict[str, Path]) -> None:
    report = json.loads((runs["local"] / "cv.json").read_text())
    assert report["protocol"]["training"] == "local"
    local = OofPredictions.load(runs["local"] / "oof.npz")
    federated = OofPredictions.load(runs["federated"] / "oof.npz")
    assert local.plan_digest() == federated.plan_digest()
    assert np.array_equal(local.sites, federated.sites)
    site_runs = sorted(p.name for p in (runs["local"] / "fold-1").iterdir() if p.is_dir())
    assert site_runs == ["site-1", "site-2"]
    saved = json.loads((runs["local"] / "fold-1" / "site-2" / "results.json").read_text())
    assert saved["config"]["federation"]["sites"] == 1


def test_compare_gives_per_site_gain(runs: dict[str, Path]) -> None:
    result = runner.invoke(
        app, ["cv", "compare", str(runs["federated"]), str(runs["local"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.output)
    assert comparison["images"] == 60
    assert set(comparison["per_site"]) == {"site-1", "site-2"}


def test_resume_reads_finished_folds_back(runs: dict[str, Path]) -> None:
    before = (runs["federated"] / "cv.json").read_text()
    result = runner.invoke(app, ["simulate", "--resume", str(runs["federated"])])
    assert result.exit_code == 0, result.output
    assert (runs["federated"] / "cv.json").read_text() == before


def test_cv_refusals_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, [*TINY[:2], "500", *TINY[3:], "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "cv_folds=500" in result.output
    assert "Traceback" not in result.output
    other = runner.invoke(app, ["cv", "compare", str(tmp_path), str(tmp_path)])
    assert other.exit_code == 3 and "oof.npz" in other.output
