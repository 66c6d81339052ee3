"""The DICOM path on the bundled digits (no shared data): make-export --digits -> ingest -> train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from clinfl.cli.app import app
from clinfl.config.presets import DIGITS
from clinfl.data.label_space import LabelSpace
from clinfl.data.labels import DIGIT_CLASSES, named_label_columns, parse_label_columns
from clinfl.errors import LabelError
from site_agent.ingest.labels import read_labels
from site_agent.ingest.pipeline import IngestOptions, ingest_export

runner = CliRunner()
LIMIT = 120


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "pacs"
    result = runner.invoke(
        app, ["data", "make-export", "--digits", "--out", str(out), "--limit", str(LIMIT)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"images": LIMIT, "broken": 5}
    return out


def test_digits_export_ingests_in_the_digits_label_space(
    digits_export: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "site",
            "ingest",
            "--data",
            str(digits_export),
            "--state",
            str(tmp_path / "state"),
            "--label-space",
            "digits",
            "--image-size",
            "16",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["accepted"] == LIMIT
    assert summary["label_space"] == "digits"
    assert list(summary["label_counts"]) == list(DIGIT_CLASSES)
    assert sum(summary["label_counts"].values()) >= LIMIT  # composites carry two digits
    assert summary["quarantined"] == {
        "colour": 1,
        "no_label": 1,
        "not_dicom": 1,
        "truncated": 1,
        "wrong_modality": 1,
    }


def test_digits_labels_are_unknown_in_the_cxr14_space(digits_export: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["site", "ingest", "--data", str(digits_export), "--state", str(tmp_path / "s"), "--json"],
    )
    assert result.exit_code != 0
    error = json.loads(result.stdout)
    assert error["error"] == "LabelError" and "unknown label name" in error["message"]


def test_ingested_digits_match_their_labels(digits_export: Path, tmp_path: Path) -> None:
    """A digit composite's pixels follow its label: images with digit 1 differ from those without."""
    result = ingest_export(
        digits_export,
        state_dir=tmp_path,
        options=IngestOptions(image_size=16, label_space="digits", workers=1),
    )
    assert result.images.shape == (LIMIT, 16, 16) and result.targets.shape == (LIMIT, 10)
    assert result.targets.sum(axis=1).min() >= 1
    # MONOCHROME1 files were inverted back: the background (corners) is dark in every image.
    corners = result.images[:, [0, 0, -1, -1], [0, -1, 0, -1]].astype(np.int64)
    assert corners.max() < 64


def test_named_digit_columns_and_bad_cells(tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text(
        "SOPInstanceUID," + ",".join(DIGIT_CLASSES) + "\n1.2.3," + ",".join("0100000001") + "\n"
    )
    rows = read_labels(table, key="sop", salt=b"s" * 16, space=LabelSpace("digits", DIGIT_CLASSES))
    (vector,) = rows.values()
    assert vector.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    header = ["SOPInstanceUID", *DIGIT_CLASSES]
    columns = named_label_columns(header, classes=DIGIT_CLASSES)
    assert columns is not None
    with pytest.raises(LabelError, match="not 0 or 1"):
        parse_label_columns([{name: "2" for name in header}], columns, classes=DIGIT_CLASSES)
    assert named_label_columns(header[:-1], classes=DIGIT_CLASSES) is None


def test_make_export_needs_one_source(tmp_path: Path) -> None:
    for args in ([], ["--digits", "--images", str(tmp_path)]):
        result = runner.invoke(app, ["data", "make-export", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code != 0
        assert "--digits" in result.output and "Traceback" not in result.output


def _simulate_on(export: Path, out: Path, *options: str) -> Result:
    """Run a one-round, three-site federation on ``export`` (a sum of two besides a colluder)."""
    return runner.invoke(
        app,
        [
            "simulate",
            "--dataset",
            "dicom",
            "--label-space",
            "digits",
            "--images",
            str(export),
            "--sites",
            "3",
            "--secagg-min-sites",
            "2",
            "--rounds",
            "1",
            *options,
            "--out",
            str(out),
            "--json",
        ],
    )


@pytest.mark.slow
def test_a_federation_trains_on_the_digits_export(digits_export: Path, tmp_path: Path) -> None:
    result = _simulate_on(digits_export, tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert f"{LIMIT} accepted, 5 quarantined" in summary["data"]
    # an export labelled with the digits takes the digits preset, recorded resolved
    assert summary["config"]["data"]["image_size"] == DIGITS.image_size
    assert summary["config"]["method"]["width"] == DIGITS.width
    assert summary["rounds"][0]["sites"] == 3


def test_rerun_reads_one_pack_and_a_changed_export_repacks(
    digits_export: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    shutil.copytree(digits_export, export)
    options = IngestOptions(image_size=16, label_space="digits", workers=1)
    first = ingest_export(export, state_dir=tmp_path / "state", options=options)
    packs = list((tmp_path / "state" / "cache").glob("pack-16-*.npy"))
    assert len(packs) == 1
    again = ingest_export(export, state_dir=tmp_path / "state", options=options)
    assert again.summary["decoded_this_run"] == 0
    np.testing.assert_array_equal(again.images, first.images)
    assert list((tmp_path / "state" / "cache").glob("pack-16-*.npy")) == packs
    victim = next(p for p in sorted(export.rglob("IM0*")) if p.is_file())
    victim.unlink()
    fewer = ingest_export(export, state_dir=tmp_path / "state", options=options)
    assert fewer.summary["accepted"] == LIMIT - 1 and len(fewer.images) == LIMIT - 1
    assert fewer.summary["decoded_this_run"] == 0
    now = list((tmp_path / "state" / "cache").glob("pack-16-*.npy"))
    assert len(now) == 1 and now != packs


def test_a_digits_seed_picks_other_composites(digits_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "seed-1"
    args = ["data", "make-export", "--digits", "--limit", str(LIMIT), "--seed", "1"]
    assert runner.invoke(app, [*args, "--out", str(out)]).exit_code == 0
    tables = [
        read_labels(
            folder / "labels.csv", key="sop", salt=b"s", space=LabelSpace("digits", DIGIT_CLASSES)
        )
        for folder in (digits_export, out)
    ]
    first, other = (sorted(tuple(v) for v in table.values()) for table in tables)
    assert first != other


def _simulate_with_data_policy(export: Path, tmp_path: Path, data_terms: str) -> Any:
    """Simulate on ``export`` under one policy for every site with these ``[data]`` terms."""
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f"[dp]\nrequired = false\n[secagg]\nmin_sites = 2\n[data]\n{data_terms}\nmin_samples = 1\n"
        '[reporting]\nmetrics = ["loss", "auc", "counts", "epsilon"]\n'  # as research.toml
    )
    result = _simulate_on(export, tmp_path / "run", "--policy", str(policy))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_simulate_on_an_export_applies_the_policys_dicom_filters(
    digits_export: Path, tmp_path: Path
) -> None:
    """The simulated sites share the export, so it is filtered by their policy: a policy that
    accepts only DX quarantines the export's CR images (before, they were trained on)."""
    summary = _simulate_with_data_policy(digits_export, tmp_path, 'modalities = ["DX"]')
    accepted = int(summary["data"].split(" accepted")[0].split()[-1])
    assert 0 < accepted < LIMIT  # the CR half is quarantined
    quarantine = json.loads((tmp_path / "run" / "ingest" / "quarantine.json").read_text())
    assert "modality" in json.dumps(quarantine).lower()


def test_simulate_on_an_export_quarantines_the_views_its_policy_excludes(
    digits_export: Path, tmp_path: Path
) -> None:
    """A policy that accepts only PA views: the export's AP images (one in five) are quarantined
    as wrong_view, and the federation trains on the PA ones."""
    summary = _simulate_with_data_policy(digits_export, tmp_path, 'views = ["PA"]')
    accepted = int(summary["data"].split(" accepted")[0].split()[-1])
    ingest = json.loads((tmp_path / "run" / "ingest" / "ingest_summary.json").read_text())
    assert accepted == ingest["accepted"] == LIMIT - LIMIT // 5  # every fifth image is AP
    # (the truncated copy of the first, AP, image may be refused for its view too)
    assert ingest["quarantined"]["wrong_view"] >= LIMIT // 5
    quarantine = json.loads((tmp_path / "run" / "ingest" / "quarantine.json").read_text())
    refused = [f for f in quarantine["files"] if f["reason"] == "wrong_view"]
    assert len(refused) == ingest["quarantined"]["wrong_view"]
