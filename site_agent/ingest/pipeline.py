"""``ingest_export``: walk a PACS export, index it by content, decode in parallel, join labels.

Every regular file under the export is seen once. DICOM is recognised by content. Headers are
read first (pixels deferred) and filtered by the site policy. Survivors are decoded strictly and
cached. A re-run on an unchanged export only stats files. Every unused file gets a reason code in
the quarantine report, which names files only by a salted hash of their SOP Instance UID (or of
their content): no patient names, IDs, dates, accession numbers or paths.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clinfl.data.label_space import LabelSpace, resolve_label_space
from clinfl.errors import DataError
from clinfl.files import write_json
from site_agent.ingest import reasons
from site_agent.ingest.index import IngestIndex, Outcome, file_sha256, site_salt
from site_agent.ingest.labels import find_label_table, read_labels
from site_agent.ingest.worker import FileJob, process_file

QUARANTINE_FILE = "quarantine.json"
SUMMARY_FILE = "ingest_summary.json"
SITE_INGEST_DIR = "ingest"  # where a site's state folder keeps the ingest of its export
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest: training size, strictness, policy filters, label key and space, workers.

    ``label_columns`` are the classes of the ``custom`` label space (the labels file's finding
    columns, in output order); ``uncertain_labels`` maps the ``chexpert`` space's uncertain
    (-1) cells: ``ones`` or ``zeros``.
    """

    image_size: int = 64
    lenient: bool = False
    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST",)
    views: tuple[str, ...] = ("PA", "AP")
    label_key: str = "sop"
    label_space: str = "cxr14"
    workers: int = 2
    label_columns: tuple[str, ...] = ()
    uncertain_labels: str = "ones"

    @property
    def space(self) -> LabelSpace:
        """The label space the labels are in.

        Raises:
            ValidationError: for an unknown space or bad custom label columns.
        """
        return resolve_label_space(self.label_space, self.label_columns)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names of the label space, in target order."""
        return self.space.classes

    @property
    def cache_key(self) -> tuple[int, bool, str]:
        """What an outcome depends on besides the file's content."""
        filters = "|".join(
            [",".join(self.modalities), ",".join(self.body_parts), ",".join(self.views)]
        )
        return (self.image_size, self.lenient, filters)


@dataclass
class IngestResult:
    """The accepted, labelled images and the summary."""

    images: np.ndarray
    targets: np.ndarray
    groups: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def walk_files(data_dir: str) -> list[tuple[str, os.stat_result]]:
    """Every regular file under ``data_dir`` (symlinks not followed), sorted, with its stat."""
    files: list[tuple[str, os.stat_result]] = []
    try:
        with os.scandir(data_dir) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:  # an unreadable folder is skipped, as os.walk does
        return files
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            files.extend(walk_files(entry.path))
        elif entry.is_file(follow_symlinks=False):
            files.append((entry.path, entry.stat(follow_symlinks=False)))
    return files


def file_outcomes(
    files: list[tuple[str, os.stat_result]],
    index: IngestIndex,
    options: IngestOptions,
    salt: bytes,
    progress: Progress | None,
) -> tuple[dict[str, str], dict[str, Outcome], int]:
    """Hash (or recall) every file and process new content; return path->sha, sha->outcome."""
    shas: dict[str, str] = {}
    outcomes: dict[str, Outcome] = {}
    jobs: dict[str, FileJob] = {}  # one job per new content hash
    for done, (path, stat) in enumerate(files, start=1):
        sha = index.known_sha(path, stat.st_size, stat.st_mtime_ns)
        if sha is None:
            sha = file_sha256(Path(path))
            index.remember_path(path, stat.st_size, stat.st_mtime_ns, sha)
        shas[path] = sha
        if sha not in outcomes:
            known = index.outcome(sha, options.cache_key)
            if known is not None:
                outcomes[sha] = known
            elif sha not in jobs:
                jobs[sha] = FileJob(
                    path=path,
                    sha256=sha,
                    cache_file=str(index.cache_path(sha, options.image_size)),
                    size=options.image_size,
                    lenient=options.lenient,
                    modalities=options.modalities,
                    body_parts=options.body_parts,
                    views=options.views,
                    salt=salt,
                )
        if progress is not None:
            progress("indexing", done, len(files))
    index.commit()
    work = list(jobs.values())
    if options.workers > 1 and len(work) > 1:
        with ProcessPoolExecutor(max_workers=options.workers) as pool:
            results = pool.map(process_file, work, chunksize=4)
            for done, (job, outcome) in enumerate(zip(work, results, strict=True), start=1):
                outcomes[job.sha256] = outcome
                index.store(job.sha256, options.cache_key, outcome)
                if progress is not None:
                    progress("decoding", done, len(work))
    else:
        for done, job in enumerate(work, start=1):
            outcomes[job.sha256] = process_file(job)
            index.store(job.sha256, options.cache_key, outcomes[job.sha256])
            if progress is not None:
                progress("decoding", done, len(work))
    index.commit()
    return shas, outcomes, len(work)


def ingest_export(
    data_dir: Path,
    *,
    state_dir: Path,
    options: IngestOptions,
    labels: Path | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Ingest a DICOM export into training arrays and write the quarantine report.

    Raises:
        DataError: if ``data_dir`` is not a folder, or the label table cannot be read.
        LabelError: for unknown label names, a missing key column, or a label table that does
            not fit the label space (every problem listed).
        ValidationError: for an unknown label space or bad custom label columns.
    """
    if not data_dir.is_dir():
        raise DataError(f"export folder {data_dir} does not exist", remedy="pass --data DIR")
    started = time.perf_counter()
    data_dir = data_dir.resolve()
    salt = site_salt(state_dir)
    label_path = find_label_table(data_dir, labels)
    label_rows = (
        read_labels(
            label_path,
            key=options.label_key,
            salt=salt,
            space=options.space,
            uncertain=options.uncertain_labels,
        )
        if label_path
        else {}
    )
    label_file = label_path.resolve() if label_path is not None else None
    files = [(path, stat) for path, stat in walk_files(str(data_dir)) if path != str(label_file)]
    index = IngestIndex(state_dir)
    try:
        shas, outcomes, decoded = file_outcomes(files, index, options, salt, progress)
        image_shas: list[str] = []  # the accepted content hashes, in file order
        targets, groups, quarantine = [], [], []
        accepted_shas: set[str] = set()
        for path, _ in files:
            sha = shas[path]
            outcome = outcomes[sha]
            name = outcome.sop_hash or f"content-{sha[:20]}"
            if outcome.status != "accepted":
                quarantine.append(
                    {"file": name, "reason": outcome.reason, "detail": outcome.detail}
                )
                continue
            if sha in accepted_shas:
                quarantine.append({"file": name, "reason": reasons.DUPLICATE, "detail": ""})
                continue
            key = {
                "sop": outcome.sop_hash,
                "study": outcome.study_hash,
                "accession": outcome.accession_hash,
            }[options.label_key]
            target = label_rows.get(key)
            if target is None:
                quarantine.append({"file": name, "reason": reasons.NO_LABEL, "detail": ""})
                continue
            accepted_shas.add(sha)
            image_shas.append(sha)
            targets.append(target)
            groups.append(int(outcome.study_hash[:12] or sha[:12], 16))
        images = index.load_images(image_shas, options.image_size)
    finally:
        index.close()
    counts = Counter(entry["reason"] for entry in quarantine)
    target_matrix = (
        np.stack(targets) if targets else np.zeros((0, len(options.classes)), dtype=np.uint8)
    )
    summary = {
        "files_seen": len(files)
        + (1 if label_file is not None and label_file.is_relative_to(data_dir) else 0),
        "label_table": label_path.name if label_path else None,
        "accepted": len(images),
        "quarantined": dict(sorted(counts.items())),
        "quarantined_total": len(quarantine),
        "label_counts": dict(
            zip(options.classes, (int(v) for v in target_matrix.sum(axis=0)), strict=True)
        ),
        "decoded_this_run": decoded,
        "reused_from_index": len(files) - decoded,
        "label_space": options.label_space,
        "label_space_digest": options.space.digest,
        "image_size": options.image_size,
        "lenient": options.lenient,
        "seconds": time.perf_counter() - started,
    }
    write_json(state_dir / QUARANTINE_FILE, {"reasons": reasons.DESCRIPTIONS, "files": quarantine})
    write_json(state_dir / SUMMARY_FILE, summary)
    return IngestResult(
        images=images,
        targets=target_matrix.astype(np.uint8),
        groups=np.asarray(groups, dtype=np.int64),
        summary=summary,
    )
