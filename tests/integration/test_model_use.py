"""Using a trained model: export, predict (DICOM and PNG), explain, model card, bad input.

One tiny federation (2 sites, 1 round, 16 px digits) and one small DICOM export are built once
for the module; every test reuses them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.cli.app import app
from clinfl.config import MethodConfig
from clinfl.data.digits import load_digit_composites
from clinfl.data.imageset import ImageSet
from clinfl.model_io import read_bundle, write_bundle
from site_agent.evaluation import HeldOutEvaluator
from site_agent.ingest.pipeline import IngestOptions, ingest_export
from site_agent.prediction.explain import class_maps
from site_agent.prediction.model import load_bundle_model

runner = CliRunner()
EXPORT_LIMIT = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run folder and its exported model folder."""
    root = tmp_path_factory.mktemp("model-use")
    run = root / "run"
    result = runner.invoke(
        app,
        ["simulate", "--sites", "2", "--secagg", "off", "--rounds", "1", "--rho", "0.6",
         "--image-size", "16", "--max-samples", "160", "--composites-per-pair", "1", "--out", str(run), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = root / "model"
    result = runner.invoke(app, ["model", "export", "--run", str(run), "--out", str(model)])
    assert result.exit_code == 0, result.output
    assert "clinfl model predict --model" in result.output
    return run, model


@pytest.fixture(scope="module")
def dicom_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pacs") / "export"
    result = runner.invoke(
        app,
        ["data", "make-export", "--digits", "--out", str(out), "--limit", str(EXPORT_LIMIT),
         "--seed", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _evaluator_probabilities(model: Path, images: np.ndarray) -> np.ndarray:
    """What the federation's evaluator computes for these images with the exported state."""
    bundle = read_bundle(model)
    algorithm = create_algorithm(bundle.method)
    assert bundle.federation_seed is not None
    spec = ModelSpec(len(bundle.class_names), bundle.image_size, bundle.federation_seed, 0)
    held = ImageSet(images, np.zeros((len(images), 10), np.uint8), np.arange(len(images)),
                    bundle.class_names)  # fmt: skip
    return HeldOutEvaluator(held, held, algorithm, spec).probabilities(bundle.state, "test")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_results_carry_f1_at_validation_thresholds_beside_f1_at_half(
    trained: tuple[Path, Path],
) -> None:
    run, model = trained
    results = json.loads((run / "results.json").read_text())
    (first,) = results["rounds"]
    assert first["macro_f1_at_thresholds"] is not None and first["macro_f1"] is not None
    operating = results["best"]["operating"]
    assert operating["rule"] == "f1" and operating["chosen_on"] == "validation"
    thresholds = json.loads((model / "thresholds.json").read_text())
    assert thresholds["classes"] == operating["classes"]
    assert thresholds["test_f1"]["macro_at_thresholds"] == first["macro_f1_at_thresholds"]


def test_export_then_predict_round_trips_bit_for_bit(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, model = trained
    round_number = json.loads((run / "results.json").read_text())["best"]["round"]
    checkpoint = load_file(str(run / "checkpoints" / f"round-{round_number:04d}.safetensors"))
    bundle = read_bundle(model)
    assert set(bundle.state) == set(checkpoint)
    assert all(torch.equal(bundle.state[k], checkpoint[k]) for k in checkpoint)
    write_bundle(bundle, tmp_path / "again")
    for name in ("weights.safetensors", "model.json", "thresholds.json"):
        assert (tmp_path / "again" / name).read_bytes() == (model / name).read_bytes()
    split = load_digit_composites(seed=0, image_size=16, per_pair=1, val_fraction=0.15)
    pngs = tmp_path / "pngs"
    (pngs / "sub").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(split.test.images[i]).save(pngs / ("sub" if i else "") / f"x{i}.png")
    out = tmp_path / "predictions.csv"
    result = runner.invoke(
        app, ["model", "predict", "--model", str(model), "--data", str(pngs), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = _read_csv(out)
    assert [r["key"] for r in rows] == ["sub/x1.png", "sub/x2.png", "sub/x3.png", "sub/x4.png",
                                        "x0.png"]  # fmt: skip
    got = np.array([[float(r[f"p_{c}"]) for c in bundle.class_names] for r in rows])
    order = [1, 2, 3, 4, 0]
    assert np.array_equal(got, _evaluator_probabilities(model, split.test.images[order]))
    thresholds = np.array(bundle.threshold_values)
    for row, probs in zip(rows, got, strict=True):
        expected = [c for c, p, t in zip(bundle.class_names, probs, thresholds, strict=True)
                    if p >= t]  # fmt: skip
        assert row["positive"] == "|".join(expected)


def test_predict_on_a_fresh_dicom_export_matches_the_evaluator_and_keeps_uids_local(
    trained: tuple[Path, Path], dicom_export: Path, tmp_path: Path
) -> None:
    _, model = trained
    state, out = tmp_path / "state", tmp_path / "local" / "predictions.json"
    result = runner.invoke(
        app,
        ["model", "predict", "--model", str(model), "--data", str(dicom_export), "--out",
         str(out), "--state", str(state), "--workers", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == json.loads(out.read_text())
    classes = document["classes"]
    with open(dicom_export / "labels.csv", newline="") as handle:
        uids = {row["SOPInstanceUID"] for row in csv.DictReader(handle)}
    keys = [row["key"] for row in document["predictions"]]
    assert len(keys) == EXPORT_LIMIT + 1  # the unlabelled file is used too: labels are optional
    assert len(set(keys) & uids) == EXPORT_LIMIT and len(set(keys) - uids) == 1
    assert {u["reason"] for u in document["unused"]} == {
        "colour", "not_dicom", "truncated", "wrong_modality",
    }  # fmt: skip
    # the UIDs are in the local output and nowhere else the site keeps
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(uid.encode() in data for uid in keys), path
    assert not any(uid in result.stderr for uid in keys)
    # the same probabilities as the evaluator gives the same ingested images
    ingested = ingest_export(
        dicom_export,
        state_dir=tmp_path / "ingest",
        options=IngestOptions(image_size=16, label_space="digits", workers=1),
    )
    expected = _evaluator_probabilities(model, ingested.images)
    got = {
        tuple(row["probabilities"][c] for c in classes): row["key"]
        for row in document["predictions"]
    }
    for probs in expected:
        match = min(got, key=lambda p: float(np.abs(np.array(p) - probs).max()))
        assert np.allclose(match, probs, rtol=0, atol=1e-6)


def test_attention_overlays_have_the_image_size_and_maps_sum_to_one(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, model = trained
    split = load_digit_composites(seed=0, image_size=16, per_pair=1, val_fraction=0.15)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.fromarray(split.test.images[0]).resize((48, 40)).save(pngs / "wide.png")
    (pngs / "notes.txt").write_text("not an image")
    explain, out = tmp_path / "explain", tmp_path / "p.csv"
    result = runner.invoke(
        app,
        ["model", "predict", "--model", str(model), "--data", str(pngs), "--out", str(out),
         "--explain", str(explain), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    (row,) = document["predictions"]
    assert document["unused"] == [
        {"file": "notes.txt", "reason": "not_an_image_file", "detail": "suffix .txt"}
    ]
    assert len(document["overlays"]) == len(row["positive"]) > 0
    for overlay in document["overlays"]:
        with Image.open(overlay["file"]) as image:
            assert image.size == (48, 40) and image.mode == "RGB"
    bundle = read_bundle(model)
    net = load_bundle_model(bundle, federation_seed=bundle.federation_seed or 0)
    maps = class_maps(net, split.test.images[0])  # type: ignore[arg-type]
    assert maps.shape[0] == 10
    assert np.allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_a_model_without_class_attention_says_so(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, model = trained
    bundle = read_bundle(model)
    method = MethodConfig(name="fedavg")
    algorithm = create_algorithm(method)
    spec = ModelSpec(10, 16, 1, 0)
    state = algorithm.initial_state(algorithm.build_model(spec))
    write_bundle(dataclasses.replace(bundle, method=method, state=state), tmp_path / "fedavg")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(pngs / "a.png")
    result = runner.invoke(
        app,
        ["model", "predict", "--model", str(tmp_path / "fedavg"), "--data", str(pngs),
         "--out", str(tmp_path / "p.csv"), "--explain", str(tmp_path / "x")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no" in result.output and "class attention" in result.output
    assert "Traceback" not in result.output


def test_an_omitted_seed_must_come_from_the_site(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = trained
    model = tmp_path / "model"
    result = runner.invoke(
        app, ["model", "export", "--run", str(run), "--out", str(model), "--etf-seed", "omit"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((model / "model.json").read_text())["federation_seed"] is None
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(pngs / "a.png")
    base = ["model", "predict", "--model", str(model), "--data", str(pngs)]
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "a.csv")])
    assert refused.exit_code == 2 and "--federation-seed" in refused.output
    seed = json.loads((run / "results.json").read_text())["config"]["federation"]
    accepted = runner.invoke(
        app,
        [*base, "--out", str(tmp_path / "b.csv"), "--federation-seed",
         str(seed["federation_seed"])],
    )  # fmt: skip
    assert accepted.exit_code == 0, accepted.output


def _chromium() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_model_card_in_three_formats_and_its_html_draws_in_a_browser(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, model = trained
    for suffix in ("json", "md", "html"):
        out = tmp_path / f"card.{suffix}"
        result = runner.invoke(app, ["model", "card", "--model", str(model), "--out", str(out)])
        assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["model"]["method"] == "fedncalign" and card["provenance"]["sites"] == 2
    assert len(card["classes"]) == 10 and card["threshold_rule"] == "f1"
    assert all(c["test_auc_ci95"] is None or c["test_auc_ci95"][0] <= c["test_auc"]
               for c in card["classes"])  # fmt: skip
    assert [p["site"] for p in card["privacy"]] == ["site-1", "site-2"]
    assert card["secure_aggregation"]["enabled"] is False
    markdown = (tmp_path / "card.md").read_text()
    assert "not a medical device" in markdown and "95% CI" in markdown
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs chromium-headless-shell)")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=900,900",
         f"--screenshot={shot}", (tmp_path / "card.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1_000_000) or []
    blue = sum(count for count, (r, g, b) in colours if b > 150 and r < 80 and g < 120)
    assert blue > 50  # the AUC intervals are drawn


def test_bad_input_gets_one_line_and_an_exit_code(
    trained: tuple[Path, Path], dicom_export: Path, tmp_path: Path
) -> None:
    _, model = trained
    other_space = tmp_path / "cxr14-model"
    shutil.copytree(model, other_space)
    document = json.loads((other_space / "model.json").read_text())
    document["label_space"] = "cxr14"
    (other_space / "model.json").write_text(json.dumps(document))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model, corrupt)
    weights = corrupt / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "p.csv")
    cases = [
        (["--model", str(tmp_path / "missing"), "--data", str(dicom_export)], 4, "does not exist"),
        (["--model", str(other_space), "--data", str(dicom_export)], 4, "'cxr14' label space"),
        (["--model", str(model), "--data", str(dicom_export), "--label-space", "cxr14"], 2,
         "predicts the 'digits' label space"),
        (["--model", str(model), "--data", str(empty)], 3, "no DICOM file and no PNG"),
        (["--model", str(model), "--data", str(empty), "--format", "dicom"], 3, "no usable image"),
        (["--model", str(corrupt), "--data", str(dicom_export)], 4, "corrupt weights"),
    ]  # fmt: skip
    for arguments, code, message in cases:
        result = runner.invoke(app, ["model", "predict", *arguments, "--out", out])
        assert result.exit_code == code, (arguments, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.output
        assert "Traceback" not in result.output
    card = runner.invoke(
        app, ["model", "card", "--model", str(corrupt), "--out", str(tmp_path / "c.html")]
    )
    assert card.exit_code == 4 and "corrupt weights" in card.output
    not_a_run = runner.invoke(
        app, ["model", "export", "--run", str(empty), "--out", str(tmp_path / "m"), "--json"]
    )
    assert not_a_run.exit_code == 6
    assert json.loads(not_a_run.stdout)["error"] == "CheckpointError"
