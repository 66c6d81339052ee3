from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from tests.conftest import shared_path

runner = CliRunner()


def _cxr14(images: Path, labels: Path) -> list[str]:
    return ["--dataset", "cxr14", "--images", str(images), "--labels", str(labels)]


def test_simulate_help_documents_every_option() -> None:
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    for option in (
        "--dataset",
        "--images",
        "--labels",
        "--method",
        "--sites",
        "--rounds",
        "--local-epochs",
        "--local-steps",
        "--batch-size",
        "--lr",
        "--alpha",
        "--rho",
        "--image-size",
        "--seed",
        "--out",
        "--json",
        "--secagg",
        "--secagg-graph",
        "--secagg-min-sites",
        "--drop",
    ):
        assert option in result.output


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["--rho", "1.5"], "rho=1.5", 2),
        (["--method", "fedsgd"], "method='fedsgd'", 2),
        (
            ["--dataset", "cxr14", "--images", "/nonexistent-clinfl", "--labels", "x.csv"],
            "does not exist",
            3,
        ),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(
    args: list[str], needle: str, code: int, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["simulate", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == code
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in result.output


def test_bad_csv_as_json_error(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    csv = tmp_path / "labels.csv"
    csv.write_text("Image Index,Something\na.png,x\n")
    result = runner.invoke(
        app,
        [
            "simulate",
            *_cxr14(tmp_path / "img", csv),
            "--json",
        ],
    )
    assert result.exit_code == 3
    payload = json.loads(result.output)
    assert payload["error"] == "LabelError" and "Finding Labels" in payload["message"]
    assert payload["remedy"]


def test_unknown_label_names_named_on_the_cli(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("Image Index,Finding Labels,Patient ID\na.png,Broken Heart,1\n")
    result = runner.invoke(
        app,
        ["simulate", *_cxr14(tmp_path / "img", csv)],
    )
    assert result.exit_code == 3 and "Broken Heart" in result.output


def test_two_round_digits_federation_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--sites",
            "3",
            "--secagg-min-sites",
            "2",
            "--rounds",
            "2",
            "--rho",
            "0.6",
            "--max-samples",
            "160",
            "--composites-per-pair",
            "1",
            "--batch-size",
            "32",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    on_disk = json.loads((out / "results.json").read_text())
    assert summary == on_disk
    assert summary["method"] == "fedncalign"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["config"]["secagg"]["enabled"] is True  # secure aggregation is the default
    assert all(r["sites"] == 3 and r["aborted"] is None for r in summary["rounds"])
    for record in summary["rounds"]:
        for key in ("macro_auc", "micro_auc", "macro_f1", "micro_f1", "seconds"):
            assert 0.0 <= record[key] <= 1.0 or key == "seconds"
    best = summary["best"]
    assert set(best["per_class_auc"]) == {str(d) for d in range(10)}
    assert best["round"] in (1, 2)
    assert best["val_macro_auc"] == max(r["val_macro_auc"] for r in summary["rounds"])
    partition = summary["partition"]
    assert sum(partition["samples_per_site"]) + partition["dropped"] == 160
    checkpoints = sorted((out / "checkpoints").glob("round-*.safetensors"))
    assert [p.name for p in checkpoints] == ["round-0001.safetensors", "round-0002.safetensors"]
    from safetensors.torch import load_file

    saved = load_file(str(checkpoints[-1]))
    assert saved and not any("etf" in key for key in saved)


@pytest.mark.slow
@pytest.mark.shared_data
def test_nih1000_federation_end_to_end(tmp_path: Path) -> None:
    root = shared_path("nih1000")
    result = runner.invoke(
        app,
        [
            "simulate",
            *_cxr14(root, root / "labels.csv"),
            "--sites",
            "3",
            "--secagg-min-sites",
            "2",
            "--rounds",
            "2",
            "--rho",
            "0.5",
            "--image-size",
            "32",
            "--backbone",
            "standard",
            "--max-samples",
            "400",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert len(summary["best"]["per_class_auc"]) == 14
    assert summary["partition"]["class_names"][0] == "Atelectasis"


def _small_digits(out: Path) -> list[str]:
    return [
        "simulate",
        "--rho",
        "0.6",
        "--max-samples",
        "160",
        "--composites-per-pair",
        "1",
        "--out",
        str(out),
        "--json",
    ]


def test_injected_dropout_keeps_the_round_with_the_survivors(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            *_small_digits(tmp_path / "run"),
            "--sites",
            "5",
            "--rounds",
            "2",
            "--secagg-graph",
            "complete",
            "--drop",
            "site-2:masked-input:1",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    first, second = summary["rounds"]  # 5 sites, c = 1: t = 4, so one site may drop
    assert first["sites"] == 4 and first["aborted"] is None
    assert second["sites"] == 5
    samples = summary["partition"]["samples_per_site"]
    assert first["num_samples"] == sum(samples) - samples[1]  # n_i summed inside the mask
    assert summary["config"]["drops"] == [{"site": "site-2", "stage": "masked-input", "round": 1}]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--drop", "site-2"], "cannot read dropout 'site-2'"),
        (["--drop", "site-2:sleep"], "unknown stage 'sleep'"),
        (["--drop", "site-9:share"], "drop='site-9' is invalid"),
        (["--secagg", "maybe"], "--secagg must be on or off"),
        (["--sites", "2"], "sites=2 is invalid: allowed >= secagg.min_sites + secagg.max_"),
        (["--sites", "3"], "allowed >= secagg.min_sites + secagg.max_colluders (4)"),
        (["--secagg-max-colluders", "-1"], "secagg.max_colluders=-1 is invalid"),
        (["--secagg-bits", "8"], "secagg.bits=8 is invalid"),
    ],
)
def test_bad_secure_aggregation_options_give_one_line(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(app, [*_small_digits(tmp_path / "run"), *arguments])
    assert result.exit_code == 2, result.output
    error = json.loads(result.output)
    assert message in error["message"]
