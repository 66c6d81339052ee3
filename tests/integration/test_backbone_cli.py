"""``clinfl simulate`` with a pretrained backbone started from a weights file."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torchvision.models import mobilenet_v2
from typer.testing import CliRunner

from clinfl.cli.app import app

runner = CliRunner()


def test_simulate_mobilenet_from_an_init_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.safetensors"
    state = {k: v.contiguous() for k, v in mobilenet_v2().features.state_dict().items()}
    save_file(state, str(weights))
    out = tmp_path / "run"
    args = [
        "--sites",
        "1",
        "--rho",
        "1",
        "--rounds",
        "1",
        "--max-samples",
        "40",
        "--image-size",
        "32",
    ]
    backbone = ["--backbone", "mobilenet_v2", "--feature-stride", "16", "--train-blocks", "3"]
    result = runner.invoke(
        app,
        ["simulate", "--out", str(out), *args, *backbone, "--init-weights", str(weights)],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    method = results["config"]["method"]
    assert method["backbone"] == "mobilenet_v2" and method["init_weights"] == str(weights)
    assert method["train_blocks"] == 3 and method["feature_stride"] == 16


def test_simulate_with_a_misfitting_file_gives_one_line(tmp_path: Path) -> None:
    weights = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(weights))
    result = runner.invoke(
        app,
        [
            "simulate",
            "--out",
            str(tmp_path / "run"),
            "--sites",
            "1",
            "--rho",
            "1",
            "--max-samples",
            "40",
            "--backbone",
            "mobilenet_v2",
            "--init-weights",
            str(weights),
        ],
    )
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 4 and "Traceback" not in result.output
    assert len(errors) == 1 and "unexpected key 'conv1.weight'" in errors[0]
