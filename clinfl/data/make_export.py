"""``make_export``: a realistic PACS-style DICOM export from a PNG data set and its labels.

``make_digits_export`` writes the same kind of export from the bundled digit composites, so the
default demo can exercise the DICOM path on data that every install carries.

The export mixes CR and DX, MONOCHROME1 and MONOCHROME2, 8, 12 and 16 bits, five transfer
syntaxes (explicit and implicit little endian, deflated, RLE lossless, JPEG 2000 lossless), a
VOI window or a rescale intercept on some files, PACS-like nested folders with extension-less
names, and a ``labels.csv`` keyed by SOPInstanceUID. A few deliberately broken files (not DICOM,
truncated, a CT, a colour image, an image without a label) show the quarantine.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clinfl.data.chestxray14 import INDEX_COLUMN, PATIENT_COLUMN, read_label_table
from clinfl.data.digits import load_digit_composites
from clinfl.data.labels import DIGIT_CLASSES, FINDING_COLUMN
from clinfl.data.png_reader import IMAGE_SUFFIXES
from clinfl.errors import DataError

Progress = Callable[[int, int], None]
BITS = (8, 12, 16)
DIGITS_EXPORT_SIZE = 64


def _syntaxes() -> list[Any]:
    from pydicom import uid

    return [
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.RLELossless,
        uid.JPEG2000Lossless,
    ]


def _dataset(pixels: np.ndarray, *, modality: str, photometric: str, bits: int) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = "ANON"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _encode(ds: Any, pixels: np.ndarray, syntax: Any, path: Path) -> None:
    from pydicom import uid

    if syntax in (uid.RLELossless, uid.JPEG2000Lossless):
        ds.compress(syntax, pixels)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _pixels(gray: np.ndarray, *, bits: int, monochrome1: bool) -> np.ndarray:
    top = (1 << bits) - 1
    values = np.round(gray.astype(np.float64) / 255.0 * top)
    if monochrome1:
        values = top - values
    return values.astype(np.uint8 if bits == 8 else np.uint16)


def _folder(out_dir: Path, patient: str, index: int) -> Path:
    digest = hashlib.sha256(patient.encode()).hexdigest()[:8].upper()
    return out_dir / f"PAT{digest}" / f"STU{index // 7:04d}" / f"SER{index % 3:02d}"


def _image_paths(images_dir: Path) -> dict[str, Path]:
    return {
        path.name: path
        for path in images_dir.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    }


@dataclass(frozen=True)
class ExportItem:
    """One image to export: 8-bit grayscale pixels, its patient key and ``Finding Labels``."""

    gray: np.ndarray
    patient: str
    findings: str


def write_export(
    items: Sequence[ExportItem], out_dir: Path, *, progress: Progress | None = None
) -> dict[str, int]:
    """Write ``items`` as a PACS-like DICOM tree with broken files and ``labels.csv``.

    Raises:
        DataError: if there is nothing to write or ``out_dir`` is not empty.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty", remedy="choose a new --out folder")
    if not items:
        raise DataError("there are no images to export", remedy="check the source data")
    syntaxes = _syntaxes()
    labels: list[tuple[str, str]] = []
    written = {"images": 0, "broken": 0}
    files: list[Path] = []  # not empty after the loop: items is not
    for i, item in enumerate(items):
        bits, monochrome1 = BITS[i % len(BITS)], i % 4 == 1
        pixels = _pixels(item.gray, bits=bits, monochrome1=monochrome1)
        ds = _dataset(
            pixels,
            modality="CR" if i % 2 else "DX",
            photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2",
            bits=bits,
        )
        ds.ViewPosition = "PA" if i % 5 else "AP"
        if i % 6 == 0:
            ds.WindowCenter, ds.WindowWidth = (1 << bits) // 2, (1 << bits) - 1
        path = _folder(out_dir, item.patient, i) / f"IM{i:05d}"
        _encode(ds, pixels, syntaxes[i % len(syntaxes)], path)
        labels.append((str(ds.SOPInstanceUID), item.findings))
        files.append(path)
        written["images"] += 1
        if progress is not None:
            progress(i + 1, len(items))
    written["broken"] = _broken_files(out_dir, files[0], items[-1].gray)
    with open(out_dir / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SOPInstanceUID", FINDING_COLUMN])
        writer.writerows(labels)
    return written


def make_export(
    images_dir: Path,
    labels_csv: Path,
    out_dir: Path,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Write the export of a PNG data set; return counts of what was written.

    Raises:
        DataError: if the images or labels are missing, or ``out_dir`` is not empty.
    """
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist", remedy="pass --images DIR")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty", remedy="choose a new --out folder")
    header, rows = read_label_table(labels_csv)
    if INDEX_COLUMN not in header or FINDING_COLUMN not in header:
        raise DataError(
            f"{labels_csv.name} needs '{INDEX_COLUMN}' and '{FINDING_COLUMN}' columns",
            remedy="give a ChestX-ray14-style label table",
        )
    paths = _image_paths(images_dir)
    rows = [row for row in rows if row[INDEX_COLUMN] in paths][:limit]
    if not rows:
        raise DataError(
            f"no image of {labels_csv.name} was found in {images_dir}", remedy="check --images"
        )
    items = [
        ExportItem(
            gray=np.asarray(Image.open(paths[row[INDEX_COLUMN]]).convert("L")),
            patient=row.get(PATIENT_COLUMN, str(i)),
            findings=row[FINDING_COLUMN],
        )
        for i, row in enumerate(rows)
    ]
    return write_export(items, out_dir, progress=progress)


def make_digits_export(
    out_dir: Path,
    *,
    seed: int = 0,
    image_size: int = DIGITS_EXPORT_SIZE,
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Write the bundled digit composites (every split) as a DICOM export labelled by digit.

    The labels use the ``digits`` label space (``Finding Labels`` such as ``3|7``), so ingest
    and simulate it with ``--label-space digits``.

    Raises:
        DataError: if ``out_dir`` is not empty.
    """
    split = load_digit_composites(seed=seed, image_size=image_size)
    items: list[ExportItem] = []
    for part in (split.train, split.val, split.test):
        for image, target, group in zip(part.images, part.targets, part.groups, strict=True):
            names = [DIGIT_CLASSES[k] for k in np.flatnonzero(target)]
            items.append(
                ExportItem(
                    gray=np.asarray(image), patient=f"digits-{group}", findings="|".join(names)
                )
            )
    order = np.random.default_rng(seed).permutation(len(items))
    return write_export([items[k] for k in order][:limit], out_dir, progress=progress)


def _broken_files(out_dir: Path, good: Path, gray: np.ndarray) -> int:
    """Add files the ingester must quarantine: not DICOM, truncated, CT, colour, unlabelled."""
    broken = out_dir / "PAT00000000" / "STU9999" / "SER99"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "README").write_text("This folder came with the export; it is not an image.\n")
    data = good.read_bytes()
    (broken / "IM_TRUNCATED").write_bytes(data[: len(data) * 6 // 10])
    ct = _dataset(
        _pixels(gray, bits=12, monochrome1=False), modality="CT", photometric="MONOCHROME2", bits=12
    )
    _encode(ct, _pixels(gray, bits=12, monochrome1=False), _syntaxes()[0], broken / "IM_CT")
    unlabelled = _dataset(
        _pixels(gray, bits=8, monochrome1=False), modality="CR", photometric="MONOCHROME2", bits=8
    )
    _encode(
        unlabelled,
        _pixels(gray, bits=8, monochrome1=False),
        _syntaxes()[0],
        broken / "IM_UNLABELLED",
    )
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    colour = _dataset(rgb[:, :, 0], modality="CR", photometric="MONOCHROME2", bits=8)
    colour.Rows, colour.Columns = gray.shape
    colour.SamplesPerPixel, colour.PhotometricInterpretation, colour.PlanarConfiguration = (
        3,
        "RGB",
        0,
    )
    colour.PixelData = rgb.tobytes()
    colour.save_as(broken / "IM_COLOUR", enforce_file_format=True)
    return 5
