"""``clinfl simulate`` with a pretrained backbone started from a weights file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torchvision.models import mobilenet_v2
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.config import MethodConfig
from clinfl.model.backbones.build import build_feature_backbone
from clinfl.model_io import read_bundle

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
    assert results["init_weights"]["sha256"] is not None

    # the model folder holds the blocks that never trained: predicting needs no weights file
    model = tmp_path / "model"
    result = runner.invoke(app, ["model", "export", "--run", str(out), "--out", str(model)])
    assert result.exit_code == 0, result.output
    bundle = read_bundle(model)
    frozen = bundle.state["backbone.features.0.0.weight"]  # the stem: not among the last 3 blocks
    start = state["0.0.weight"] * (
        state["0.1.weight"] / torch.sqrt(state["0.1.running_var"] + 1e-5)
    ).reshape(-1, 1, 1, 1)  # the stem convolution with its BatchNorm folded in
    assert torch.allclose(frozen, start, atol=1e-6)
    weights.unlink()
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(3):
        Image.fromarray((np.arange(32 * 32).reshape(32, 32) * (i + 1) % 256).astype(np.uint8)).save(
            pngs / f"x{i}.png"
        )
    predictions = tmp_path / "predictions.csv"
    result = runner.invoke(
        app,
        ["model", "predict", "--model", str(model), "--data", str(pngs), "--out", str(predictions)],
    )
    assert result.exit_code == 0, result.output
    assert len(predictions.read_text().strip().splitlines()) == 4


def test_a_random_start_is_group_normalised_and_a_pretrained_one_folded(tmp_path: Path) -> None:
    random_start = build_feature_backbone(
        MethodConfig(backbone="mobilenet_v2", pretrained=False), 64
    )
    assert any(isinstance(m, nn.GroupNorm) for m in random_start.modules())
    weights = tmp_path / "mobilenet.safetensors"
    save_file(
        {k: v.contiguous() for k, v in mobilenet_v2().features.state_dict().items()}, str(weights)
    )
    folded = build_feature_backbone(MethodConfig(backbone="mobilenet_v2", init_weights=weights), 64)
    norms = (nn.GroupNorm, nn.BatchNorm2d)
    assert not any(isinstance(m, norms) for m in folded.modules())
    # without reading the file (a model folder's rebuild) the network has the same tensors
    skeleton = build_feature_backbone(
        MethodConfig(backbone="mobilenet_v2", init_weights=tmp_path / "absent.safetensors"),
        64,
        load_initial_weights=False,
    )
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {
        k: v.shape for k, v in folded.state_dict().items()
    }


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
