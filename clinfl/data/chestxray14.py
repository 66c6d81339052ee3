"""ChestX-ray14 loader: an image folder plus a label table, split by patient.

The label table is ``Data_Entry_2017*.csv[.gz]`` or any CSV with an ``Image Index`` (or ``path``,
or CheXpert's ``Path``) column and either a ``Finding Labels`` column or one named label column
per class (mapped by name, in any order). The classes are the label space's: the 14
ChestX-ray14 findings by default, CheXpert's 14 observations, or a custom list of columns
(:mod:`clinfl.data.label_table`). The official split is taken from an ``official_split`` column or
from ``train_val_list.txt``/``test_list.txt`` when present; otherwise patients are split at
random.
Validation is always split from the training side by patient.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clinfl.data.imageset import ImageSet, SplitData, split_by_group
from clinfl.data.label_space import LabelSpace
from clinfl.data.label_table import table_targets
from clinfl.data.labels import CXR14_LABELS
from clinfl.data.png_reader import IMAGE_SUFFIXES, read_grayscale
from clinfl.errors import DataError, InternalError, LabelError

INDEX_COLUMN = "Image Index"
PATH_COLUMN = "path"
PATH_COLUMNS = (PATH_COLUMN, "Path")  # CheXpert's CSVs name the image path "Path"
PATIENT_COLUMN = "Patient ID"
SPLIT_COLUMN = "official_split"
SPLIT_FILES = ("train_val_list.txt", "test_list.txt")
DEFAULT_CXR14_SIZE = 64

ProgressCallback = Callable[[int, int], None]


def read_label_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV (optionally gzipped) into its header and rows.

    Raises:
        DataError: if the file is missing, empty or not readable as CSV.
    """
    if not path.is_file():
        raise DataError(
            f"label table {path} does not exist", remedy="pass an existing --labels CSV"
        )
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))
        rows = [dict(row) for row in reader]
        header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read label table {path}: {exc}", remedy="give a CSV file") from exc
    if not header or not rows:
        raise DataError(f"label table {path} is empty", remedy="give a CSV with a header and rows")
    return header, rows


CXR14_SPACE = LabelSpace("cxr14", CXR14_LABELS)


def _find_split_lists(candidates: list[Path]) -> tuple[set[str], set[str]] | None:
    for folder in candidates:
        train_file, test_file = (folder / name for name in SPLIT_FILES)
        if train_file.is_file() and test_file.is_file():
            train = {line.strip() for line in train_file.read_text().splitlines() if line.strip()}
            test = {line.strip() for line in test_file.read_text().splitlines() if line.strip()}
            return train, test
    return None


def _locate_images(
    images_dir: Path, rows: list[dict[str, str]], header: list[str]
) -> list[Path | None]:
    path_column = next((c for c in PATH_COLUMNS if c in header), None)
    if path_column is not None:
        candidates = [images_dir / (row.get(path_column) or "") for row in rows]
        return [path if path.is_file() else None for path in candidates]
    if INDEX_COLUMN not in header:
        raise LabelError(
            f"label table lacks an '{INDEX_COLUMN}' (or '{PATH_COLUMN}') column",
            remedy=f"add '{INDEX_COLUMN}' with each image's file name",
        )
    by_name: dict[str, Path] = {}
    for file in images_dir.rglob("*"):
        if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
            by_name.setdefault(file.name, file)
    return [by_name.get((row.get(INDEX_COLUMN) or "").strip()) for row in rows]


def _split_flags(
    rows: list[dict[str, str]], header: list[str], search: list[Path]
) -> tuple[np.ndarray | None, str]:
    if SPLIT_COLUMN in header:
        values = [(row.get(SPLIT_COLUMN) or "").strip().lower() for row in rows]
        return np.array([v == "test" for v in values]), f"official split ('{SPLIT_COLUMN}' column)"
    lists = _find_split_lists(search)
    if lists is not None and INDEX_COLUMN in header:
        _, test = lists
        flags = np.array([(row.get(INDEX_COLUMN) or "").strip() in test for row in rows])
        return flags, "official split (train_val_list.txt / test_list.txt)"
    return None, "random 20% patient-level test split (no official split found)"


def _require_folder(images_dir: Path) -> None:
    """Raise DataError if ``images_dir`` is not a folder."""
    if not images_dir.is_dir():
        raise DataError(
            f"image folder {images_dir} does not exist", remedy="pass an existing --images DIR"
        )


def _found_images(
    images_dir: Path, labels_csv: Path, rows: list[dict[str, str]], header: list[str]
) -> tuple[list[Path | None], np.ndarray]:
    """Return each row's image file (None: not found) and which rows have one.

    Raises:
        DataError: when no listed image is under ``images_dir``.
    """
    paths = _locate_images(images_dir, rows, header)
    found = np.array([p is not None for p in paths])
    if not found.any():
        raise DataError(
            f"none of the {len(rows)} images listed in {labels_csv.name} is under {images_dir}",
            remedy="point --images at the folder holding the listed files",
        )
    return paths, found


def _read_images(
    paths: list[Path | None],
    keep: np.ndarray,
    *,
    image_size: int,
    progress: ProgressCallback | None,
) -> np.ndarray:
    """Decode the images of rows ``keep`` (all found) into ``[N, size, size]`` uint8.

    Raises:
        InvalidImageError: for an image that cannot be decoded.
    """
    images = np.zeros((keep.size, image_size, image_size), dtype=np.uint8)
    for position, row_index in enumerate(keep):
        path = paths[row_index]
        if path is None:
            raise InternalError(f"row {row_index} was kept but its image was not found")
        images[position] = read_grayscale(path, size=image_size)
        if progress is not None:
            progress(position + 1, keep.size)
    return images


def load_chestxray14(
    images_dir: Path,
    labels_csv: Path,
    *,
    image_size: int = DEFAULT_CXR14_SIZE,
    split_dir: Path | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    max_samples: int | None = None,
    progress: ProgressCallback | None = None,
    space: LabelSpace = CXR14_SPACE,
    uncertain: str = "ones",
) -> SplitData:
    """Load a ChestX-ray14-style image folder and label table into train/validation/test sets.

    Rows whose image is not in ``images_dir`` are skipped (a full 112,120-row table may be used with
    a partial image folder). No patient appears in two splits. The targets are in ``space``
    (``uncertain``: how the ``chexpert`` space's -1 cells count, ``ones`` or ``zeros``).

    Raises:
        DataError: for a missing folder or table, or when no listed image is found.
        LabelError: for missing columns, unknown label names or cells that are not labels
            (every problem of the table at once).
        InvalidImageError: for an image that cannot be decoded.
    """
    _require_folder(images_dir)
    header, rows = read_label_table(labels_csv)
    targets = table_targets(
        header, rows, space, uncertain=uncertain, source=f"label table {labels_csv.name}"
    )
    paths, found = _found_images(images_dir, labels_csv, rows, header)
    search = [d for d in (split_dir, labels_csv.parent, images_dir) if d is not None]
    test_flags, split_source = _split_flags(rows, header, search)
    patients = _patient_groups(rows, header)
    keep = np.flatnonzero(found)
    rng = np.random.default_rng(seed)
    if max_samples is not None and keep.size > max_samples:
        keep = np.sort(rng.choice(keep, size=max_samples, replace=False))
    images = _read_images(paths, keep, image_size=image_size, progress=progress)
    pool = ImageSet(images, targets[keep], patients[keep], space.classes)
    if test_flags is None:
        train_val_idx, test_idx = split_by_group(pool.groups, fraction=0.2, rng=rng)
    else:
        test_idx = np.flatnonzero(test_flags[keep])
        train_val_idx = np.flatnonzero(~test_flags[keep])
    train_val = pool.subset(train_val_idx)
    train_idx, val_idx = split_by_group(train_val.groups, fraction=val_fraction, rng=rng)
    test = pool.subset(test_idx)
    if len(test) == 0 or train_idx.size == 0 or val_idx.size == 0:
        raise DataError(
            f"the split left an empty set (train {train_idx.size}, val {val_idx.size}, "
            f"test {len(test)})",
            remedy="use more images, or check the split lists",
        )
    kind = "ChestX-ray14" if space == CXR14_SPACE else f"Images labelled in {space.describe()}"
    description = (
        f"{kind} at {image_size}px from {images_dir.name}: {train_idx.size} train / "
        f"{val_idx.size} val / {len(test)} test images; {split_source}; validation by patient; "
        f"{int((~found).sum())} listed images not found"
    )
    return SplitData(
        train=train_val.subset(train_idx),
        val=train_val.subset(val_idx),
        test=test,
        description=description,
    )


def _patient_groups(rows: list[dict[str, str]], header: list[str]) -> np.ndarray:
    if PATIENT_COLUMN in header:
        keys: list[str] = [(row.get(PATIENT_COLUMN) or "").strip() for row in rows]
    else:  # no patient column: every image is its own group
        keys = [str(i) for i in range(len(rows))]
    _, inverse = np.unique(np.array(keys), return_inverse=True)
    return inverse.astype(np.int64)


def load_chestxray14_pool(
    images_dir: Path,
    labels_csv: Path,
    *,
    image_size: int = DEFAULT_CXR14_SIZE,
    group_column: str | None = PATIENT_COLUMN,
    seed: int = 0,
    max_samples: int | None = None,
    progress: ProgressCallback | None = None,
    space: LabelSpace = CXR14_SPACE,
    uncertain: str = "ones",
) -> tuple[ImageSet, list[dict[str, str]]]:
    """Load every listed image that is found as one unsplit set (for cross-validation).

    Groups are ``group_column``'s values (None: every image its own group). Returns the set and
    the label-table rows of its images, in the same order. ``max_samples`` keeps a seeded
    random subset of the found images. The targets are in ``space`` (see
    :func:`load_chestxray14`).

    Raises:
        DataError: for a missing folder or table, or when no listed image is found.
        LabelError: for missing columns (``group_column`` included) or unknown label names.
        InvalidImageError: for an image that cannot be decoded.
    """
    _require_folder(images_dir)
    header, rows = read_label_table(labels_csv)
    if group_column is not None and group_column not in header:
        raise LabelError(
            f"label table {labels_csv.name} has no '{group_column}' column",
            remedy="name the patient column with --group-by: one of " + ", ".join(header),
        )
    targets = table_targets(
        header, rows, space, uncertain=uncertain, source=f"label table {labels_csv.name}"
    )
    paths, found = _found_images(images_dir, labels_csv, rows, header)
    keep = np.flatnonzero(found)
    if max_samples is not None and keep.size > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_samples, replace=False))
    images = _read_images(paths, keep, image_size=image_size, progress=progress)
    if group_column is None:
        keys = [str(i) for i in keep]
    else:
        keys = [(rows[i].get(group_column) or "").strip() for i in keep]
    _, groups = np.unique(np.array(keys), return_inverse=True)
    pool = ImageSet(images, targets[keep], groups.astype(np.int64), space.classes)
    return pool, [rows[i] for i in keep]
