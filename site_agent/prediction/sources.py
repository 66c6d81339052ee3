"""What ``clinfl model predict`` reads: a DICOM export (through the strict ingest path) or PNGs.

A DICOM export goes through the same steps as ``clinfl site ingest``: recognised by content,
filtered by the policy's modalities, body parts and views, decoded strictly, cached by content.
Labels are not needed (a ``labels.csv`` is skipped). Each accepted image is keyed by its SOP
Instance UID, which is kept in memory for the local output only: the ingest index and cache in
the state folder hold salted hashes, as ingest's do. Files that cannot be used are listed with
the quarantine reason ingest gives them, named by the same salted hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from clinfl.data.png_reader import IMAGE_SUFFIXES, read_grayscale
from clinfl.errors import ConfigError, DataError, InvalidImageError
from site_agent.ingest import reasons
from site_agent.ingest.header import Rejected, looks_like_dicom, read_header
from site_agent.ingest.index import IngestIndex, site_salt
from site_agent.ingest.labels import find_label_table
from site_agent.ingest.pipeline import IngestOptions, file_outcomes, walk_files

Progress = Callable[[str, int, int], None]
SourceKind = Literal["auto", "dicom", "png"]
UNREADABLE_IMAGE = "unreadable_image"
NOT_AN_IMAGE_FILE = "not_an_image_file"


@dataclass(frozen=True)
class Unused:
    """A file that was not predicted on: its name (a salted hash for DICOM) and why."""

    file: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class PredictionInput:
    """Images ``[N, size, size]`` uint8 with one key each, the unused files, and the source.

    ``paths`` holds each PNG's file (to draw explanations at its own size); None for DICOM.
    """

    kind: Literal["dicom", "png"]
    keys: tuple[str, ...]
    images: np.ndarray
    unused: tuple[Unused, ...]
    paths: tuple[Path, ...] | None = None


def detect_kind(data_dir: Path) -> Literal["dicom", "png"]:
    """Say whether ``data_dir`` holds a DICOM export or a folder of PNG/JPEG images.

    Raises:
        DataError: if the folder is missing or holds neither.
        ConfigError: if it holds both (the caller must choose).
    """
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist", remedy="pass --data DIR")
    files = [Path(path) for path, _ in walk_files(str(data_dir))]
    pictures = any(path.suffix.lower() in IMAGE_SUFFIXES for path in files)
    dicom = any(looks_like_dicom(path) for path in files)
    if pictures and dicom:
        raise ConfigError(
            f"{data_dir} holds both DICOM files and PNG/JPEG images",
            remedy="pass --format dicom or --format png",
        )
    if not pictures and not dicom:
        raise DataError(
            f"{data_dir} holds no DICOM file and no PNG/JPEG image ({len(files)} files)",
            remedy="pass a PACS export or a folder of PNG images",
        )
    return "dicom" if dicom else "png"


def read_png_folder(data_dir: Path, *, size: int, progress: Progress | None) -> PredictionInput:
    """Read every PNG/JPEG under ``data_dir`` (recursively), keyed by its relative path.

    Raises:
        DataError: if no image could be read.
    """
    files = sorted(Path(path) for path, _ in walk_files(str(data_dir)))
    keys: list[str] = []
    images: list[np.ndarray] = []
    paths: list[Path] = []
    unused: list[Unused] = []
    for done, path in enumerate(files, start=1):
        key = path.relative_to(data_dir).as_posix()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            unused.append(Unused(key, NOT_AN_IMAGE_FILE, f"suffix {path.suffix or '(none)'}"))
        else:
            try:
                images.append(read_grayscale(path, size=size))
                keys.append(key)
                paths.append(path)
            except InvalidImageError as error:
                unused.append(Unused(key, UNREADABLE_IMAGE, error.message[:160]))
        if progress is not None:
            progress("reading images", done, len(files))
    _require_some(data_dir, keys, unused)
    return PredictionInput("png", tuple(keys), _stack(images, size), tuple(unused), tuple(paths))


def _stack(images: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, size, size), dtype=np.uint8)


def _require_some(data_dir: Path, keys: list[str], unused: list[Unused]) -> None:
    if keys:
        return
    counts: dict[str, int] = {}
    for item in unused:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "no files"
    raise DataError(
        f"no usable image in {data_dir} ({detail})",
        remedy="check the folder; unused files are listed by reason",
    )


def read_dicom_export(
    data_dir: Path, *, state_dir: Path, options: IngestOptions, progress: Progress | None
) -> PredictionInput:
    """Ingest ``data_dir`` strictly (as ``clinfl site ingest`` does, labels optional).

    Raises:
        DataError: if the folder is missing or no file is usable.
    """
    if not data_dir.is_dir():
        raise DataError(f"export folder {data_dir} does not exist", remedy="pass --data DIR")
    data_dir = data_dir.resolve()
    salt = site_salt(state_dir)
    table = find_label_table(data_dir, None)
    skip = str(table.resolve()) if table is not None else None
    files = [(path, stat) for path, stat in walk_files(str(data_dir)) if path != skip]
    index = IngestIndex(state_dir)
    keys: list[str] = []
    shas: list[str] = []
    unused: list[Unused] = []
    try:
        file_shas, outcomes, _ = file_outcomes(files, index, options, salt, progress)
        for path, _ in files:
            sha = file_shas[path]
            outcome = outcomes[sha]
            name = outcome.sop_hash or f"content-{sha[:20]}"
            if outcome.status != "accepted":
                unused.append(Unused(name, outcome.reason or "", outcome.detail))
            elif sha in shas:
                unused.append(Unused(name, reasons.DUPLICATE))
            else:
                try:  # the UID itself never reaches the index: it is read here, kept in memory
                    uid = read_header(Path(path), lenient=options.lenient).sop_instance_uid
                except Rejected as rejected:  # the file changed since it was indexed
                    unused.append(Unused(name, rejected.reason, rejected.detail))
                    continue
                keys.append(uid or name)
                shas.append(sha)
        images = [index.load_image(sha, options.image_size) for sha in shas]
    finally:
        index.close()
    _require_some(data_dir, keys, unused)
    return PredictionInput("dicom", tuple(keys), _stack(images, options.image_size), tuple(unused))


def read_native_grayscale(path: Path) -> np.ndarray:
    """Return a PNG/JPEG as uint8 grayscale at its own size (for drawing explanations).

    Raises:
        InvalidImageError: if the file cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidImageError(
            f"cannot decode image {path.name}: {exc}", remedy="remove or replace the file"
        ) from exc
    square = read_grayscale(path, size=max(width, height))
    resized = Image.fromarray(square).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)
