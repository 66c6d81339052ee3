"""The ingester on real DICOM files: each yields an image or the right reason code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from site_agent.ingest import reasons
from site_agent.ingest.worker import FileJob, process_file
from tests.conftest import shared_path

CHEST = ("CR", "DX")


def _outcome(path: Path, tmp_path: Path, *, size: int = 64):
    job = FileJob(
        path=str(path),
        sha256="x" * 64,
        cache_file=str(tmp_path / f"{path.name}.npy"),
        size=size,
        lenient=False,
        modalities=CHEST,
        body_parts=("CHEST",),
        views=("PA", "AP"),
        salt=b"salt",
    )
    outcome = process_file(job)
    image = np.load(job.cache_file, allow_pickle=False) if outcome.status == "accepted" else None
    return outcome, image


EXPECTED = {
    "CT_small.dcm": reasons.WRONG_MODALITY,
    "ExplVR_BigEndNoMeta.dcm": reasons.NOT_DICOM,
    "no_meta.dcm": reasons.NOT_DICOM,
    "OT-PAL-8-face.dcm": reasons.NOT_DICOM,
    "zipMR.gz": reasons.NOT_DICOM,
    "meta_missing_tsyntax.dcm": reasons.UNREADABLE_HEADER,
    "badVR.dcm": reasons.UNREADABLE_HEADER,
    "rtplan.dcm": reasons.NOT_AN_IMAGE,
    "test-SR.dcm": reasons.NOT_AN_IMAGE,
    "waveform_ecg.dcm": reasons.NOT_AN_IMAGE,
    "MR_small_RLE.dcm": reasons.WRONG_MODALITY,
    "JPEG2000.dcm": reasons.WRONG_MODALITY,
    "examples_ybr_color.dcm": reasons.WRONG_MODALITY,
    "dicomdirtests__77654033__CR1__6154.dcm": reasons.WRONG_BODY_PART,
}


@pytest.mark.shared_data
def test_every_edge_case_yields_an_image_or_a_reason(tmp_path: Path) -> None:
    folder = shared_path("dicom-edge-cases")
    seen = 0
    for path in sorted(folder.iterdir()):
        if path.name in ("MANIFEST.csv", "SOURCE.md", "SHA256SUMS"):
            continue
        outcome, image = _outcome(path, tmp_path)
        seen += 1
        assert outcome.status in ("accepted", "quarantined")
        if outcome.status == "quarantined":
            assert outcome.reason in reasons.DESCRIPTIONS
        else:
            assert image is not None and image.shape == (64, 64) and image.dtype == np.uint8
        if path.name in EXPECTED:
            assert outcome.reason == EXPECTED[path.name], path.name
    assert seen == 39


@pytest.mark.shared_data
def test_chest_images_are_accepted_and_monochrome1_is_inverted(tmp_path: Path) -> None:
    folder = shared_path("dicom-chest") / "siim_acr"
    original = next(p for p in folder.glob("1.2.276*.dcm"))
    flipped = folder / "Fake_MONOHR1.dcm"
    first, plain = _outcome(original, tmp_path)
    second, inverted = _outcome(flipped, tmp_path)
    assert first.status == second.status == "accepted"
    assert plain is not None and inverted is not None
    difference = np.abs(plain.astype(int) - (255 - inverted.astype(int)))
    assert difference.max() <= 1  # the same pixels, read as MONOCHROME1, give the inverse


@pytest.mark.shared_data
def test_rg1_encodings_agree_within_their_codecs_tolerance(tmp_path: Path) -> None:
    folder = shared_path("dicom-chest") / "compsamples_RG1_chest_CR"
    images = {}
    for name in ("RG1_UNCR.dcm", "RG1_JLSN.dcm", "RG1_J2KI.dcm"):
        outcome, image = _outcome(folder / name, tmp_path, size=128)
        assert outcome.status == "accepted", (name, outcome)
        images[name] = image.astype(int)
    near_lossless = np.abs(images["RG1_UNCR.dcm"] - images["RG1_JLSN.dcm"])
    lossy = np.abs(images["RG1_UNCR.dcm"] - images["RG1_J2KI.dcm"])
    assert near_lossless.max() <= 2 and near_lossless.mean() < 0.5  # +-4 of 32768 levels
    assert lossy.mean() < 2.0 and lossy.max() <= 40  # lossy J2K: close, not equal


@pytest.mark.shared_data
def test_nih_dicom_without_body_part_or_view_is_accepted_by_the_policy(tmp_path: Path) -> None:
    folder = shared_path("dicom-chest") / "nih_gcp_dicom"
    path = next(folder.glob("*.dcm"))
    outcome, image = _outcome(path, tmp_path)
    assert outcome.status == "accepted" and image is not None and outcome.sop_hash
