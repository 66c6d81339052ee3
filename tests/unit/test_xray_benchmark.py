"""The X-ray benchmark's cells, configurations and report (no training)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.xray import SEEDS, SETTINGS, Cell, cells, run_config
from benchmarks.xray_report import render_xray
from clinfl.algorithms import available_algorithms
from clinfl.config import validate_run_config


def test_every_seed_has_the_single_site_and_the_skewed_cells() -> None:
    table = cells(SEEDS)
    assert len(table) == len(SEEDS) * (2 + 3 * len(SETTINGS))
    assert len({c.key for c in table}) == len(table)
    for seed in SEEDS:
        variants = {(c.variant, c.setting) for c in table if c.seed == seed}
        assert ("centralized", None) in variants and ("scratch", None) in variants
        for setting in SETTINGS:
            assert {("local", setting), ("fedavg", setting), ("fedncalign", setting)} <= variants


def test_cells_of_one_seed_share_the_folds_and_differ_where_they_should() -> None:
    seed = 3
    configs = {c.key: run_config(c) for c in cells((seed,))}
    for config in configs.values():
        assert config.data.cv_folds == 5 and config.data.cv_seed == seed
        assert config.data.group_by == "Patient ID"
        assert config.method.backbone == "mobilenet_v2"
        validate_run_config(config, known_methods=available_algorithms())
    central = configs[Cell("centralized", seed).key]
    scratch = configs[Cell("scratch", seed).key]
    assert central.federation.sites == 1 and central.method.pretrained
    assert not scratch.method.pretrained and scratch.method.train_blocks is None
    local = configs[Cell("local", seed, "s2").key]
    fed = configs[Cell("fedncalign", seed, "s2").key]
    assert local.federation.training == "local" and fed.federation.training == "federated"
    assert (local.data.alpha, local.data.rho) == (fed.data.alpha, fed.data.rho) == SETTINGS["s2"]
    assert fed.secagg.enabled and fed.federation.sites == 5


def _record(variant: str, seed: int, setting: str | None, auc: float) -> dict[str, Any]:
    def estimate(value: float) -> dict[str, float]:
        return {"value": value, "low": value - 0.05, "high": value + 0.05}

    metrics = {m: estimate(auc) for m in ("learnable_macro_auc", "abnormal_auc")}
    metrics["all_class_macro_auc"] = estimate(auc - 0.01)
    return {
        "key": Cell(variant, seed, setting).key,
        "variant": variant,
        "seed": seed,
        "setting": setting,
        "seconds": 60.0,
        "metrics": {"model": metrics, "no-skill": {k: estimate(0.5) for k in metrics}},
        "per_class": {"Effusion": estimate(auc), "Hernia": estimate(0.5)},
        "per_site": {"site-1": estimate(auc), "site-2": estimate(auc - 0.02)},
        "learnable_classes": ["Effusion"],
        "positive_patients": {"Effusion": 40, "Hernia": 3},
        "protocol": {"images": 1000, "patients": 264},
    }


def test_report_pairs_seeds_and_shows_each_sites_gain() -> None:
    runs = []
    for seed in (0, 1, 2):
        runs += [_record("centralized", seed, None, 0.70 + 0.01 * seed)]
        runs += [_record("scratch", seed, None, 0.60 + 0.01 * seed)]
        for setting in ("s1", "s2"):
            runs += [_record("local", seed, setting, 0.62 + 0.01 * seed)]
            runs += [_record("fedavg", seed, setting, 0.68 + 0.01 * seed)]
            runs += [_record("fedncalign", seed, setting, 0.69 + 0.01 * seed)]
    text = "\n".join(render_xray({"runs": runs, "recipe": {"folds": 5}}))
    # every pair differs by the same amount on each seed: the interval collapses to the mean
    assert (
        "| pretrained minus from scratch (centralized) | +10.00 [+10.00, +10.00] (3 seeds)" in text
    )
    assert "| FedNCAlign-ML minus FedAvg, s1 | +1.00 [+1.00, +1.00] (3 seeds)" in text
    assert "| s2 | site-2 | 61.0 (60.0 to 62.0) | +6.00 [+6.00, +6.00] (3 seeds)" in text
    assert "baseline: no-skill (constant score) | 3 | 50.0" in text
    assert "| Effusion (learnable) | 40 |" in text


def test_report_is_empty_without_results_and_lists_failed_cells() -> None:
    assert render_xray({}) == []
    failed = {"key": "fedavg/s1/seed0", "error": "RuntimeError()"}
    text = "\n".join(render_xray({"runs": [_record("centralized", 0, None, 0.7), failed]}))
    assert "Failed cells (recorded, not in the tables): fedavg/s1/seed0." in text


@pytest.mark.parametrize("seed", [0, 4])
def test_cell_keys_name_their_folder(seed: int) -> None:
    assert Cell("fedavg", seed, "s1").key == f"fedavg/s1/seed{seed}"
    assert Cell("centralized", seed).key == f"centralized/seed{seed}"
