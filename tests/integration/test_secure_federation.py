"""In-process federations with secure aggregation: same model as plain, aborts, no ETF on the wire."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import DataConfig, Dropout, FederationConfig, RunConfig, SecAggConfig
from clinfl.data.digits import load_digit_composites
from clinfl.federation import RoundSettings
from clinfl.secagg.settings import largest_safe_scale
from clinfl.simulation import run_simulation
from clinfl.simulation.sites import build_sites
from coordinator.checkpoints import CheckpointStore
from coordinator.rounds import Coordinator
from coordinator.secure_aggregation import SecureAggregator
from site_agent.evaluation import HeldOutEvaluator
from tests.support.recording import RecordingParticipant

FEDERATION = FederationConfig(sites=3, rounds=1, batch_size=32, seed=0)
DATA = DataConfig(rho=0.6, max_samples=120, composites_per_pair=1)


SECAGG = SecAggConfig(min_sites=2)  # 3 sites: a sum covers 2 honest sites besides 1 colluder


def _config(**changes: Any) -> RunConfig:
    return dataclasses.replace(
        RunConfig(data=DATA, federation=FEDERATION, secagg=SECAGG), **changes
    )


def test_secure_and_plain_federations_give_the_same_model(tmp_path: Path) -> None:
    secure = run_simulation(_config(), tmp_path / "secure")
    plain = run_simulation(_config(secagg=SecAggConfig(enabled=False)), tmp_path / "plain")
    config = SecAggConfig()
    scale = largest_safe_scale(sites=3, weight_cap=config.weight_cap, clip=config.clip, bits=32)
    worst = max(
        (secure.outcome.final_state[n] - plain.outcome.final_state[n]).abs().max().item()
        for n in plain.outcome.final_state
    )
    assert 0 < worst <= 1 / scale + 1e-6
    assert secure.outcome.records[0].num_samples == plain.outcome.records[0].num_samples
    s_auc = secure.outcome.records[0].report.test.macro_auc
    p_auc = plain.outcome.records[0].report.test.macro_auc
    assert abs(s_auc - p_auc) < 0.01


def test_abandoned_round_applies_nothing_and_the_next_round_runs(tmp_path: Path) -> None:
    drops = (Dropout("site-2", "share", round=1),)
    result = run_simulation(
        _config(federation=dataclasses.replace(FEDERATION, rounds=2), drops=drops), tmp_path
    )
    first, second = result.outcome.records
    assert first.aborted is not None and "threshold is 3" in first.aborted
    assert first.sites == 0 and first.num_samples == 0
    assert second.aborted is None and second.sites == 3
    assert result.outcome.selected.round == 2
    from safetensors.torch import load_file

    initial = load_file(str(tmp_path / "checkpoints" / "round-0001.safetensors"))
    algorithm = create_algorithm(result.config.method)
    spec = ModelSpec(num_classes=10, image_size=16, federation_seed=20240917, init_seed=0)
    fresh = algorithm.travelling_state(algorithm.build_model(spec))
    assert all(torch.equal(initial[n], fresh[n]) for n in fresh)


def _walk(value: Any, out: list[bytes], ints: list[int]) -> None:
    if isinstance(value, torch.Tensor):
        out.append(value.detach().contiguous().numpy().tobytes())
    elif isinstance(value, np.ndarray):
        out.append(value.tobytes())
    elif isinstance(value, bytes):
        out.append(value)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        ints.append(value)
    elif isinstance(value, str):
        out.append(value.encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _walk(getattr(value, field.name), out, ints)
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(key, out, ints)
            _walk(item, out, ints)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _walk(item, out, ints)


def test_the_etf_and_its_seed_never_appear_in_any_message(tmp_path: Path) -> None:
    config = _config()
    split = load_digit_composites(seed=0, image_size=16, per_pair=1)
    algorithm = create_algorithm(config.method)
    spec = ModelSpec(num_classes=10, image_size=16, federation_seed=20240917, init_seed=0)
    thirds = np.array_split(np.arange(90), 3)
    built = build_sites(config, split, thirds, out_dir=tmp_path, run_id="etf-scan")
    assert built.first.spec == spec
    sites = [RecordingParticipant(a) for a in built.participants]
    coordinator = Coordinator(
        sites,
        SecureAggregator(config.secagg, run_id="etf-scan"),
        HeldOutEvaluator(split.val, split.test, algorithm, spec),
        CheckpointStore(tmp_path),
    )
    model = algorithm.build_model(spec)
    coordinator.run(
        algorithm.travelling_state(model),
        rounds=1,
        settings_for=lambda r: RoundSettings(r, local_epochs=1, batch_size=32, lr=1e-3),
    )
    etf = model.etf.prototypes.detach()
    blobs: list[bytes] = []
    ints: list[int] = []
    for site in sites:
        for _, message in site.to_site + site.to_coordinator:
            _walk(message, blobs, ints)
    assert len(blobs) > 50
    wire = b"".join(blobs)
    for row in (etf[0], etf[-1]):
        assert row.numpy().tobytes() not in wire
        assert row.to(torch.float64).numpy().tobytes() not in wire
    assert spec.federation_seed not in ints
    assert str(spec.federation_seed).encode() not in wire
