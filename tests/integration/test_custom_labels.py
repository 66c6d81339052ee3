"""A site's own findings, end to end: simulate, export, predict, model card, site ingest.

A tiny PNG data set labelled in three custom finding columns (in a ChestX-ray14-style label
table, beside columns that are not findings) trains one round of a one-site run at 16 px and
width 8; its model predicts those three classes and refuses data labelled in another space. A
DICOM export whose labels.csv holds custom columns is ingested and trained on the same way.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.data.label_space import LabelSpace

runner = CliRunner()
FINDINGS = ("Finding A", "Finding B", "Finding C")
SPACE = LabelSpace("custom", FINDINGS)
COLUMN_OPTIONS = [arg for name in FINDINGS for arg in ("--label-column", name)]
EXPORTED = 100  # the export's UIDs are random, so its split is: 100 images keep it usable
QUICK = [
    "--sites",
    "1",
    "--rho",
    "1",
    "--rounds",
    "1",
    "--width",
    "8",
    "--image-size",
    "16",
    "--json",
]


def _image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 24 px image whose findings are drawn: A top-left, B bottom-right, C a middle bar."""
    image = rng.integers(0, 40, size=(24, 24)).astype(np.uint8)
    if labels[0]:
        image[2:10, 2:10] = 220
    if labels[1]:
        image[14:22, 14:22] = 220
    if labels[2]:
        image[11:13, :] = 220
    return image


def _write_table(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def png_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """60 PNGs and a labels.csv: Image Index, Patient ID, Age, the three findings (shuffled)."""
    root = tmp_path_factory.mktemp("custom-pngs")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    rows = []
    for i in range(60):
        labels = rng.integers(0, 2, size=3)
        Image.fromarray(_image(labels, rng)).save(images / f"img{i:03d}.png")
        rows.append([f"img{i:03d}.png", str(i // 2), str(40 + i % 30), *map(str, labels[::-1])])
    table = root / "labels.csv"
    _write_table(table, ["Image Index", "Patient ID", "Age", *FINDINGS[::-1]], rows)
    return images, table


@pytest.fixture(scope="module")
def custom_model(png_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported model of one round of `clinfl simulate` on the custom-labelled PNGs."""
    images, table = png_data
    root = tmp_path_factory.mktemp("custom-run")
    result = runner.invoke(
        app,
        ["simulate", "--dataset", "cxr14", "--images", str(images), "--labels", str(table),
         "--label-space", "custom", *COLUMN_OPTIONS, *QUICK, "--out", str(root / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["data"]["label_columns"] == list(FINDINGS)
    assert set(summary["best"]["per_class_auc"]) == set(FINDINGS)
    model = root / "model"
    result = runner.invoke(
        app, ["model", "export", "--run", str(root / "run"), "--out", str(model)]
    )
    assert result.exit_code == 0, result.output
    return model


def _predict(model: Path, data: Path, out: Path, *extra: str) -> tuple[int, list[str]]:
    result = runner.invoke(
        app, ["model", "predict", "--model", str(model), "--data", str(data), "--out", str(out),
              *extra],
    )  # fmt: skip
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_a_custom_label_space_trains_exports_and_predicts_its_classes(
    custom_model: Path, png_data: tuple[Path, Path], tmp_path: Path
) -> None:
    document = json.loads((custom_model / "model.json").read_text())
    assert document["label_space"] == "custom"
    assert document["class_names"] == list(FINDINGS)
    assert document["label_space_digest"] == SPACE.digest
    images, _ = png_data
    unlabelled = tmp_path / "to-predict"
    unlabelled.mkdir()
    for name in ("img000.png", "img001.png", "img002.png"):
        (unlabelled / name).write_bytes((images / name).read_bytes())
    out = tmp_path / "predictions.csv"
    code, lines = _predict(custom_model, unlabelled, out)
    assert code == 0, lines
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["key", "p_Finding A", "p_Finding B", "p_Finding C", "positive"]
    assert len(rows) == 3
    for row in rows:
        assert all(0 <= float(row[f"p_{name}"]) <= 1 for name in FINDINGS)
        assert set(filter(None, row["positive"].split("|"))) <= set(FINDINGS)
    # a labels.csv of the model's own space beside the images is accepted
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    (labelled / "img000.png").write_bytes((images / "img000.png").read_bytes())
    _write_table(
        labelled / "labels.csv", ["Image Index", *FINDINGS], [["img000.png", "1", "0", ""]]
    )
    code, lines = _predict(custom_model, labelled, tmp_path / "again.csv")
    assert code == 0, lines


def test_the_model_refuses_data_of_another_label_space(
    custom_model: Path, png_data: tuple[Path, Path], tmp_path: Path
) -> None:
    images, _ = png_data
    out = tmp_path / "p.csv"
    cxr14 = tmp_path / "cxr14-data"
    cxr14.mkdir()
    (cxr14 / "img000.png").write_bytes((images / "img000.png").read_bytes())
    _write_table(cxr14 / "labels.csv", ["Image Index", "Finding Labels"], [["img000.png", "Mass"]])
    two = tmp_path / "two-findings.csv"
    _write_table(two, ["Image Index", "Finding A", "Finding B"], [["img000.png", "1", "0"]])
    cases = [
        ((cxr14,), 3, "the model refuses this data: the data's label table labels.csv does not "
         "fit the custom (3 classes: Finding A, Finding B, Finding C) label space: unknown label "
         "name(s) in 'Finding Labels': Mass"),
        ((images, "--labels", str(two)), 3, "no column for 'Finding C'"),
        ((images, "--label-space", "custom", "--label-column", "Finding B", "--label-column",
          "Finding A", "--label-column", "Finding C"), 2,
         "the same classes in another order: Finding A, Finding B, Finding C vs Finding B, "
         "Finding A, Finding C"),
        ((images, "--label-space", "chexpert"), 2,
         "the model folder predicts the 'custom' label space, not chexpert (14 classes"),
    ]  # fmt: skip
    for (data, *extra), code, message in cases:
        got, lines = _predict(custom_model, Path(data), out, *extra)
        assert got == code, lines
        assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_the_model_card_lists_the_custom_classes(custom_model: Path, tmp_path: Path) -> None:
    card = tmp_path / "card.md"
    result = runner.invoke(app, ["model", "card", "--model", str(custom_model), "--out", str(card)])
    assert result.exit_code == 0, result.output
    text = card.read_text()
    assert "# Model card: fedncalign (custom)" in text
    assert "| label space | custom (3 classes) |" in text
    assert "| classes (output order) | Finding A, Finding B, Finding C |" in text
    assert f"| label-space digest (SHA-256) | {SPACE.digest} |" in text


def test_a_dicom_export_with_custom_columns_ingests_and_trains(tmp_path: Path) -> None:
    export = tmp_path / "export"
    made = runner.invoke(
        app, ["data", "make-export", "--digits", "--out", str(export), "--limit", str(EXPORTED)]
    )
    assert made.exit_code == 0, made.output
    with open(export / "labels.csv", newline="") as handle:
        digits = list(csv.DictReader(handle))
    rows = []
    for row in digits:
        found = {int(d) for d in row["Finding Labels"].split("|") if d}
        rows.append([row["SOPInstanceUID"], str(int(min(found) < 5)), str(int(max(found) >= 5))])
    _write_table(export / "labels.csv", ["SOPInstanceUID", "Low", "High"], rows)
    columns = ["--label-space", "custom", "--label-column", "Low", "--label-column", "High"]
    result = runner.invoke(
        app,
        ["site", "ingest", "--data", str(export), "--state", str(tmp_path / "state"),
         "--image-size", "16", "--workers", "1", *columns, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["accepted"] == EXPORTED
    assert list(summary["label_counts"]) == ["Low", "High"]
    expected = np.array([[int(r[1]), int(r[2])] for r in rows]).sum(axis=0)
    assert list(summary["label_counts"].values()) == expected.tolist()
    assert summary["label_space_digest"] == LabelSpace("custom", ("Low", "High")).digest
    run = runner.invoke(
        app,
        ["simulate", "--dataset", "dicom", "--images", str(export), *columns, *QUICK,
         "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert set(json.loads(run.stdout)["best"]["per_class_auc"]) == {"Low", "High"}
    model = tmp_path / "model"
    exported = runner.invoke(
        app, ["model", "export", "--run", str(tmp_path / "run"), "--out", str(model)]
    )
    assert exported.exit_code == 0, exported.output
    out = tmp_path / "predictions.csv"
    code, lines = _predict(model, export, out, "--workers", "1")  # its labels.csv fits the model
    assert code == 0, lines
    with open(out, newline="") as handle:
        predicted = list(csv.DictReader(handle))
    unlabelled = summary["quarantined"]["no_label"]  # predicting needs no label
    assert len(predicted) == EXPORTED + unlabelled and list(predicted[0]) == [
        "key",
        "p_Low",
        "p_High",
        "positive",
    ]
    wrong = runner.invoke(
        app,
        ["site", "ingest", "--data", str(export), "--state", str(tmp_path / "state"),
         "--label-space", "custom", "--label-column", "Low", "--label-column", "Middle",
         "--json"],
    )  # fmt: skip
    assert wrong.exit_code == 3
    assert "no column for 'Middle'" in json.loads(wrong.stdout)["message"]
