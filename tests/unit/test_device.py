"""Choosing a device: CPU by default, CUDA only when asked and present, DP-SGD only on the CPU.

No test needs a GPU. Where a CUDA machine is pretended (``torch.cuda`` patched), nothing is
placed on it: the checks under test run before any tensor moves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.cli.app import app
from clinfl.config import FederationConfig, MethodConfig, RunConfig, validate_run_config
from clinfl.config.policy import load_policy
from clinfl.data.imageset import ImageSet
from clinfl.device import device_description, resolve_device
from clinfl.errors import ConfigError, ValidationError
from clinfl.federation.messages import RoundSettings
from site_agent.agent import SiteIdentity
from site_agent.evaluation import HeldOutEvaluator
from site_agent.setup import setup_site
from site_agent.training import plain_trainer, simulation_random_bytes

ROOT = Path(__file__).resolve().parents[2]
SPEC = ModelSpec(num_classes=4, image_size=16, federation_seed=7, init_seed=3)


def _data(seed: int, n: int = 20) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16), dtype=np.uint8)
    targets = (rng.random((n, 4)) < 0.4).astype(np.uint8)
    targets[:, 0] = 1 - targets[:, 1]
    return ImageSet(images, targets, np.arange(n), ("a", "b", "c", "d"))


def _pretend_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_cpu_is_the_default_and_auto_follows_what_torch_sees() -> None:
    assert FederationConfig().device == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert device_description(torch.device("cpu")) == "cpu"


def test_auto_takes_the_first_cuda_device_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pretend_cuda(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    _pretend_cuda(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_a_missing_cuda_device_is_a_config_error_with_a_remedy(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    _pretend_cuda(monkeypatch, 0 if name != "cuda:3" else 2)
    with pytest.raises(ConfigError, match="torch sees") as raised:
        resolve_device(name)
    assert "--device cpu" in (raised.value.remedy or "")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", ""])
def test_unknown_spellings_are_refused_by_validation(name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        validate_run_config(
            RunConfig(federation=FederationConfig(device=name)), known_methods=("fedavg",)
        )
    assert "device" in str(raised.value)
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(name)


def test_an_explicit_cpu_device_trains_and_evaluates_bit_for_bit_like_the_default() -> None:
    algorithm = create_algorithm(MethodConfig(name="fedavg"))
    state = algorithm.initial_state(algorithm.build_model(SPEC))
    settings = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3)
    updates = [
        plain_trainer(
            "site-1",
            _data(0),
            algorithm,
            SPEC,
            weight_decay=0.01,
            random_bytes=simulation_random_bytes(5),
            **extra,
        ).train_round(state, settings)
        for extra in ({}, {"device": torch.device("cpu")})
    ]
    assert all(value.device.type == "cpu" for value in updates[1].delta.values())
    for name, value in updates[0].delta.items():
        assert torch.equal(updates[1].delta[name], value), name
    assert float(max(v.abs().max() for v in updates[0].delta.values())) > 0
    scores = [
        HeldOutEvaluator(_data(1), _data(2), algorithm, SPEC, **extra).probabilities(state, "test")
        for extra in ({}, {"device": torch.device("cpu")})
    ]
    assert scores[0].shape == (20, 4) and np.array_equal(scores[0], scores[1])


def test_dp_sgd_on_an_accelerator_is_refused_before_anything_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _pretend_cuda(monkeypatch, 1)
    policy = load_policy(ROOT / "policies" / "default.toml")
    assert policy.dp.required
    with pytest.raises(ConfigError, match="DP-SGD, which clinfl runs on the CPU only"):
        setup_site(
            SiteIdentity("site-1", Ed25519PrivateKey.generate()),
            _data(0),
            policy,
            create_algorithm(MethodConfig(name="fedavg")),
            SPEC,
            federation=FederationConfig(device="cuda"),
            directory={},
            state_dir=tmp_path / "site-1",
            run_id="run",
            config_hash=b"\0" * 32,
            grad_sample_mode="hooks",
        )


def test_simulate_refuses_a_cuda_device_this_machine_lacks_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _pretend_cuda(monkeypatch, 0)
    result = CliRunner().invoke(
        app, ["simulate", "--out", str(tmp_path / "run"), "--device", "cuda:1"]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cuda:1" in lines[0] and "torch sees 0" in lines[0]
    assert not (tmp_path / "run" / "results.json").exists()
