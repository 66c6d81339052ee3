"""Fuzzing the ingester with mutated and truncated real files: no unhandled exception, ever."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from site_agent.ingest import reasons
from site_agent.ingest.worker import FileJob, process_file
from tests.conftest import shared_path

CASES = 520
SEED = 20261123


def _sources() -> list[bytes]:
    edge = shared_path("dicom-edge-cases")
    chest = shared_path("dicom-chest")
    names = [
        edge / "dicomdirtests__77654033__CR1__6154.dcm",
        edge / "MR_small_RLE.dcm",
        edge / "MR_small_jp2klossless.dcm",
        edge / "JPEG2000.dcm",
        edge / "image_dfl.dcm",
        edge / "vlut_04.dcm",
        chest / "siim_acr" / "Fake_MONOHR1.dcm",
        next((chest / "siim_acr").glob("1.2.276*.dcm")),
    ]
    return [path.read_bytes() for path in names]


def _mutate(data: bytes, chooser: random.Random) -> bytes:
    kind = chooser.choice(("flip", "truncate", "splice", "zero"))
    blob = bytearray(data)
    if kind == "truncate":
        return bytes(blob[: chooser.randrange(0, len(blob))])
    if kind == "splice":
        start = chooser.randrange(0, len(blob))
        return bytes(blob[:start] + bytes(chooser.randrange(256) for _ in range(64)) + blob[start:])
    for _ in range(chooser.randint(1, 24)):
        position = chooser.randrange(0, len(blob))
        blob[position] = 0 if kind == "zero" else chooser.randrange(256)
    return bytes(blob)


@pytest.mark.shared_data
def test_mutated_files_are_quarantined_or_decoded_never_raise(tmp_path: Path) -> None:
    chooser = random.Random(SEED)
    sources = _sources()
    seen: dict[str, int] = {}
    for case in range(CASES):
        path = tmp_path / f"case-{case}"
        path.write_bytes(_mutate(chooser.choice(sources), chooser))
        job = FileJob(
            path=str(path),
            sha256=f"{case:064d}",
            cache_file=str(tmp_path / f"case-{case}.npy"),
            size=32,
            lenient=False,
            modalities=("CR", "DX", "MR", "NM", "OT"),
            body_parts=("CHEST", "CSPINE", "HEAD", "BRAIN", ""),
            views=("PA", "AP"),
            salt=b"s",
        )
        outcome = process_file(job)  # an exception here fails the test
        key = outcome.reason or "accepted"
        assert key in reasons.DESCRIPTIONS or key == "accepted"
        seen[key] = seen.get(key, 0) + 1
        path.unlink()
    assert sum(seen.values()) == CASES
    assert len(seen) >= 4  # the mutations reach several different failure paths
