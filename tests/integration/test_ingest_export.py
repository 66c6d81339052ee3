"""make-export -> site ingest -> a federation: the DICOM path end to end on NIH1000."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinfl.cli.app import app
from tests.conftest import shared_path

runner = CliRunner()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nih = shared_path("nih1000")
    out = tmp_path_factory.mktemp("export") / "pacs"
    result = runner.invoke(
        app,
        [
            "data",
            "make-export",
            "--images",
            str(nih),
            "--labels",
            str(nih / "labels.csv"),
            "--out",
            str(out),
            "--limit",
            "60",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def _ingest(export: Path, state: Path, *extra: str) -> dict:
    result = runner.invoke(
        app, ["site", "ingest", "--data", str(export), "--state", str(state), "--json", *extra]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.shared_data
def test_export_is_pacs_like(export: Path) -> None:
    files = [p for p in export.rglob("*") if p.is_file()]
    assert len(files) == 60 + 5 + 1  # images, broken files, labels.csv
    assert not any(p.suffix for p in files if p.name != "labels.csv")
    import pydicom

    syntaxes, bits, photometric, modalities = set(), set(), set(), set()
    for path in files:
        if path.name.startswith("IM0"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
            bits.add(int(ds.BitsStored))
            photometric.add(ds.PhotometricInterpretation)
            modalities.add(ds.Modality)
    assert len(syntaxes) == 5 and bits == {8, 12, 16}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"} and modalities == {"CR", "DX"}


@pytest.mark.shared_data
def test_ingest_summary_counts_and_rerun_does_no_work(export: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = _ingest(export, state, "--workers", "2")
    assert first["files_seen"] == 66 and first["accepted"] == 60
    assert first["quarantined"] == {
        "colour": 1,
        "no_label": 1,
        "not_dicom": 1,
        "truncated": 1,
        "wrong_modality": 1,
    }
    assert first["decoded_this_run"] == 65 and len(first["label_counts"]) == 14
    second = _ingest(export, state, "--workers", "1")
    assert second["decoded_this_run"] == 0 and second["accepted"] == 60
    report = json.loads((state / "quarantine.json").read_text())
    text = json.dumps(report)
    assert "PAT" not in text and "IM0" not in text and "ANON" not in text  # no paths or names
    assert {entry["reason"] for entry in report["files"]} == set(first["quarantined"])


@pytest.mark.shared_data
def test_a_changed_file_is_processed_again(export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    state = tmp_path / "state"
    _ingest(copy, state)
    victim = next(p for p in copy.rglob("IM00001"))
    victim.write_bytes(victim.read_bytes()[:200])
    again = _ingest(copy, state)
    assert again["decoded_this_run"] == 1 and again["accepted"] == 59
    assert again["quarantined"]["truncated"] == 2 or "unreadable_header" in again["quarantined"]


@pytest.mark.shared_data
def test_policy_filters_modalities(export: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[data]\nmodalities = ["DX"]\n')
    summary = _ingest(export, tmp_path / "state", "--policy", str(policy))
    # 30 CR images, the CT, and the unlabelled and colour files (both CR) fail the filter
    assert summary["accepted"] == 30 and summary["quarantined"]["wrong_modality"] == 33


@pytest.mark.shared_data
def test_unknown_label_names_are_an_error_that_names_them(export: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    text = (export / "labels.csv").read_text().splitlines()
    text[1] = text[1].split(",")[0] + ",Broken Heart"
    labels.write_text("\n".join(text) + "\n")
    result = runner.invoke(
        app,
        [
            "site",
            "ingest",
            "--data",
            str(export),
            "--labels",
            str(labels),
            "--state",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 3 and "Broken Heart" in result.output


@pytest.mark.shared_data
def test_too_small_an_export_is_a_clear_error(export: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "--dataset",
            "dicom",
            "--images",
            str(export),
            "--sites",
            "3",
            "--secagg-min-sites",
            "2",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 3
    assert "no finding with both positive and negative images" in result.output


@pytest.mark.shared_data
@pytest.mark.slow
def test_a_federation_trains_on_the_export(tmp_path: Path) -> None:
    nih = shared_path("nih1000")
    export = tmp_path / "pacs"
    made = runner.invoke(
        app,
        [
            "data",
            "make-export",
            "--images",
            str(nih),
            "--labels",
            str(nih / "labels.csv"),
            "--out",
            str(export),
            "--limit",
            "300",
        ],
    )
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        app,
        [
            "simulate",
            "--dataset",
            "dicom",
            "--images",
            str(export),
            "--sites",
            "3",
            "--secagg-min-sites",
            "2",
            "--rounds",
            "1",
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert "300 accepted, 5 quarantined" in summary["data"]
    assert summary["rounds"][0]["sites"] == 3
    assert (tmp_path / "run" / "ingest" / "quarantine.json").is_file()
    report = json.loads((tmp_path / "run" / "sites" / "site-1" / "audit_report.json").read_text())
    assert report["data"]["ingestion"]["quarantined"]["truncated"] == 1
