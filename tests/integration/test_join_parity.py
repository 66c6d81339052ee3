"""One federation run both ways gives the same run: in-process, and over the deployment's transport.

The same configuration (digits at 16 px, 3 sites, 2 rounds, FedAvg, secure aggregation, no DP,
the ``youden`` threshold rule) runs (a) with :func:`~clinfl.simulation.run_simulation` and
(b) as a deployment: the coordinator's own :func:`~coordinator.deploy.deployment.run_planned`
reaches three :class:`~site_agent.deploy.deployed_site.DeployedSite` objects through the wire
codec on loopback (:class:`LoopbackLink`). The deployed sites get the simulation's data through
:class:`~site_agent.join.SimulatedSlice` (each its training slice and its slice of the held-out
sets, :func:`~clinfl.simulation.sites.held_out_slices`) and its training streams through
:class:`~site_agent.join.SimulationOnly`, so only the transport differs: every site joins with
:func:`~site_agent.join.join_run` from the portable configuration either way, and both modes
evaluate every round through secure aggregation (the pooled histograms of the sites' slices).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from clinfl.config import DataConfig, FederationConfig, MethodConfig, RunConfig, SecAggConfig
from clinfl.config.presets import resolve_defaults
from clinfl.config.seeds import RunSeeds
from clinfl.config.site_fields import portable_run_config
from clinfl.evaluation.auc import auc_error_bound, histogram_metrics
from clinfl.evaluation.histograms import histograms_from_scores
from clinfl.metrics import multilabel_metrics
from clinfl.simulation import run_simulation
from clinfl.simulation.runner import SimulationResult
from clinfl.simulation.sites import held_out_slices, read_site_policies, simulated_space
from coordinator.control import RunControl
from coordinator.deploy.deployment import DeploymentPlan, run_planned
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite
from site_agent.join import SimulatedSlice, SimulationOnly
from tests.integration.test_remote_round import LoopbackLink
from tests.support.roster_pki import roster_of

CONFIG = RunConfig(
    data=DataConfig(
        dataset="digits",
        label_space="digits",  # a deployed site reads a DICOM export: the space must be named
        image_size=16,
        composites_per_pair=1,
        max_samples=120,
        rho=0.6,
    ),
    federation=FederationConfig(
        sites=3, rounds=2, batch_size=16, seed=5, threshold_rule="youden", selection="last"
    ),
    secagg=SecAggConfig(min_sites=2),  # 3 sites: a sum covers 2 honest sites besides 1 colluder
    method=MethodConfig(name="fedavg"),
)
# results.json keys that differ by mode by design, each with why:
MODE_KEYS = {
    "run_id": "an ID; each run makes its own",
    "seconds": "a timing",
    "mode": "'simulation' or 'deployment': what the file says it was",
    "data": "a deployment's data stays at the sites: the coordinator cannot describe it",
    "partition": "a deployment has no partition: each site's data is its own",
    "reports": "the simulation writes every site's audit report; deployed sites write their own",
}
# in the evaluation block, only a simulation holds the whole held-out sets to score centrally
EVALUATION_KEYS_SIMULATION_ONLY = ("central",)
# per site, only a simulation knows its policy's source and state folder (a deployed site keeps
# both to itself); whether it joined and why it declined are reported by both
SITE_KEYS_BOTH_MODES = ("joined", "refusal")


def _deployed(result: SimulationResult, tmp_path: Path) -> Path:
    """Run the deployment of ``CONFIG`` over loopback, on the simulation's data and streams."""
    config = resolve_defaults(CONFIG)  # as `clinfl coordinator start` resolves it
    keys = {f"site-{k + 1}": Ed25519PrivateKey.generate() for k in range(3)}
    roster = roster_of(keys)
    policies = read_site_policies(config, list(keys))  # the built-in terms, as the simulation's
    seeds = RunSeeds.of(config.federation)
    space = simulated_space(config, result.data)
    held_out = held_out_slices(result.data, 3, seed=seeds.split)
    sites = {
        100 + k: DeployedSite(
            SiteIdentity(name, keys[name]),
            policy=policies[name],
            roster=roster,
            data=SimulatedSlice(
                result.data.train.subset(result.partition.site_indices[k]), held_out[k], space
            ),
            state_dir=tmp_path / "deployed-sites" / name,
            simulation=SimulationOnly(stream_seed=seeds.stream(k)),
        )
        for k, name in enumerate(keys)
    }
    run_dir = tmp_path / "deployed"
    run_dir.mkdir()
    DeploymentPlan(
        run_id="parity",
        run_config=portable_run_config(config),
        sites=roster.names,
        roster_sha256=roster.digest.hex(),
    ).save(run_dir)
    run_planned(LoopbackLink(sites), run_dir)
    return run_dir


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` without what differs by mode (``MODE_KEYS``) and without timings."""
    kept = {key: value for key, value in results.items() if key not in MODE_KEYS}
    kept["rounds"] = [{k: v for k, v in r.items() if k != "seconds"} for r in kept["rounds"]]
    kept["best"] = {k: v for k, v in kept["best"].items() if k != "seconds"}
    kept["evaluation"] = {
        k: v for k, v in kept["evaluation"].items() if k not in EVALUATION_KEYS_SIMULATION_ONLY
    }
    kept["sites"] = {
        site: {k: entry[k] for k in SITE_KEYS_BOTH_MODES} for site, entry in kept["sites"].items()
    }
    return kept


def _thresholds(run_dir: Path) -> list[list[float]]:
    control = RunControl(run_dir)
    try:
        return [r["report"]["operating"]["thresholds"] for r in control.rounds()]
    finally:
        control.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SimulationResult]:
    tmp_path = tmp_path_factory.mktemp("parity")
    simulated = tmp_path / "simulated"
    result = run_simulation(CONFIG, simulated)
    return simulated, _deployed(result, tmp_path), result


def test_both_modes_give_the_same_global_model_after_every_round(
    runs: tuple[Path, Path, SimulationResult],
) -> None:
    simulated, deployed, _ = runs
    names = sorted(p.name for p in (simulated / "checkpoints").glob("round-*.safetensors"))
    assert names == ["round-0001.safetensors", "round-0002.safetensors"]
    assert sorted(p.name for p in (deployed / "checkpoints").glob("*.safetensors")) == names
    for name in names:
        ours = load_file(str(simulated / "checkpoints" / name))
        theirs = load_file(str(deployed / "checkpoints" / name))
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key)


def test_both_modes_choose_the_same_thresholds_by_the_run_s_rule(
    runs: tuple[Path, Path, SimulationResult],
) -> None:
    simulated, deployed, result = runs
    ours, theirs = _thresholds(simulated), _thresholds(deployed)
    assert len(ours) == 2 and ours == theirs
    operating = result.summary["best"]["operating"]
    assert operating["rule"] == "youden"
    selected = [c["threshold"] for c in operating["classes"].values()]
    assert selected == ours[-1]  # the selected round (the last) at the same thresholds


def test_both_modes_write_the_same_results_apart_from_what_differs_by_mode(
    runs: tuple[Path, Path, SimulationResult],
) -> None:
    simulated, deployed, _ = runs
    ours = json.loads((simulated / "results.json").read_text())
    theirs = json.loads((deployed / "results.json").read_text())
    assert ours.keys() == theirs.keys()
    assert (ours["mode"], theirs["mode"]) == ("simulation", "deployment")
    operating = theirs["best"]["operating"]  # from the pooled histograms in both modes
    assert operating is not None and operating["chosen_on"].startswith("pooled validation")
    assert theirs["evaluation"]["method"] == "secure-aggregation"
    assert theirs["evaluation"]["central"] is None and ours["evaluation"]["central"] is not None
    assert _comparable(ours) == _comparable(theirs)
    assert theirs["sites_joined"] == ["site-1", "site-2", "site-3"]
    assert theirs["config"]["federation"]["threshold_rule"] == "youden"


def test_the_pooled_histograms_of_the_sites_slices_are_the_whole_held_out_sets_auc(
    runs: tuple[Path, Path, SimulationResult],
) -> None:
    """In-process, 3 sites: the federation's AUC (from the masked sum of each site's slice)
    is the AUC of the whole test set's histograms exactly, and lies within the grid's bound
    (``clinfl.evaluation.auc``: half the chance a positive and a negative share a bin) of the
    exact AUC the centralized evaluation reports."""
    simulated, _, result = runs
    central = result.sites.central_evaluator(result.data)
    state = load_file(str(simulated / "checkpoints" / "round-0002.safetensors"))
    targets, scores = central.targets("test"), central.probabilities(state, "test")
    whole = histograms_from_scores(targets, scores)
    pooled = result.summary["rounds"][-1]
    assert pooled["macro_auc"] == histogram_metrics(whole).macro_auc
    exact = multilabel_metrics(targets, scores)
    bounds = [
        auc_error_bound(whole.positives[k], whole.negatives[k])
        for k, auc in enumerate(exact.per_class_auc)
        if auc is not None
    ]
    assert all(b is not None for b in bounds)
    assert abs(pooled["macro_auc"] - exact.macro_auc) <= float(np.mean(bounds)) + 1e-12
    assert result.summary["evaluation"]["central"]["rounds"][-1]["macro_auc"] == exact.macro_auc
