"""Recognising DICOM by content and reading its header without its pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from site_agent.ingest import reasons

PREAMBLE_BYTES = 128
MAGIC = b"DICM"


def looks_like_dicom(path: Path) -> bool:
    """Return True when the file has the 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(PREAMBLE_BYTES + len(MAGIC))
    except OSError:
        return False
    return len(head) == PREAMBLE_BYTES + len(MAGIC) and head[PREAMBLE_BYTES:] == MAGIC


@dataclass(frozen=True)
class Header:
    """What the ingester needs from a header (no patient data beyond the keying UIDs)."""

    sop_instance_uid: str
    study_instance_uid: str
    accession_number: str
    modality: str
    body_part: str
    view: str
    photometric: str
    samples_per_pixel: int
    frames: int
    rows: int
    columns: int
    transfer_syntax: str
    has_pixel_data: bool


class Rejected(Exception):  # noqa: N818 - an outcome, carried with its reason code
    """A file the ingest will not use, with its reason code and a short detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _int(dataset: Any, keyword: str, default: int) -> int:
    value = dataset.get(keyword, None)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def read_header(path: Path, *, lenient: bool) -> Header:
    """Read ``path``'s header, deferring the pixel data (it is not loaded).

    Raises:
        Rejected: ``not_dicom`` or ``unreadable_header``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not lenient and not looks_like_dicom(path):
        raise Rejected(reasons.NOT_DICOM)
    try:
        dataset = pydicom.dcmread(path, defer_size=1024, force=lenient)
        meta = getattr(dataset, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not syntax:
            raise Rejected(reasons.UNREADABLE_HEADER, "no TransferSyntaxUID in the file meta")
        header = Header(
            sop_instance_uid=_text(dataset, "SOPInstanceUID"),
            study_instance_uid=_text(dataset, "StudyInstanceUID"),
            accession_number=_text(dataset, "AccessionNumber"),
            modality=_text(dataset, "Modality").upper(),
            body_part=_text(dataset, "BodyPartExamined").upper(),
            view=_text(dataset, "ViewPosition").upper(),
            photometric=_text(dataset, "PhotometricInterpretation").upper(),
            samples_per_pixel=_int(dataset, "SamplesPerPixel", 1),
            frames=_int(dataset, "NumberOfFrames", 1),
            rows=_int(dataset, "Rows", 0),
            columns=_int(dataset, "Columns", 0),
            transfer_syntax=syntax,
            has_pixel_data="PixelData" in dataset or "FloatPixelData" in dataset,
        )
    except Rejected:
        raise
    except InvalidDicomError as error:
        raise Rejected(reasons.NOT_DICOM, str(error)[:120]) from None
    except Exception as error:
        raise Rejected(
            reasons.UNREADABLE_HEADER, f"{type(error).__name__}: {str(error)[:120]}"
        ) from None
    return header


def check_acceptable(
    header: Header,
    *,
    modalities: tuple[str, ...],
    body_parts: tuple[str, ...],
    views: tuple[str, ...],
) -> None:
    """Apply the policy's filters and the image-shape rules to a header.

    Missing BodyPartExamined or ViewPosition pass: the filters apply when the tag is present.

    Raises:
        Rejected: with the first reason that applies.
    """
    if header.rows <= 0 or header.columns <= 0:
        raise Rejected(reasons.NOT_AN_IMAGE, header.modality or "no modality")
    if header.modality not in modalities:
        raise Rejected(reasons.WRONG_MODALITY, header.modality or "missing")
    if header.body_part and header.body_part not in {b.upper() for b in body_parts}:
        raise Rejected(reasons.WRONG_BODY_PART, header.body_part)
    if header.view and header.view not in {v.upper() for v in views}:
        raise Rejected(reasons.WRONG_VIEW, header.view)
    if not header.has_pixel_data:
        raise Rejected(reasons.NO_PIXEL_DATA)
    if header.frames > 1:
        raise Rejected(reasons.MULTI_FRAME, f"{header.frames} frames")
    if header.samples_per_pixel != 1 or header.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Rejected(reasons.COLOUR, header.photometric or "no photometric interpretation")
