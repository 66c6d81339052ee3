"""Processing one file: header, policy filters, decode, cache. Runs in a worker process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from site_agent.ingest.decode import configure_reader, decode_to_training_image
from site_agent.ingest.header import Rejected, check_acceptable, read_header
from site_agent.ingest.index import Outcome, salted_hash


@dataclass(frozen=True)
class FileJob:
    """Everything a worker needs (picklable for the process pool, no open handles)."""

    path: str
    sha256: str
    cache_file: str
    size: int
    lenient: bool
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    views: tuple[str, ...]
    salt: bytes


def process_file(job: FileJob) -> Outcome:
    """Return the file's outcome; an accepted image is written to ``job.cache_file``.

    Never raises for a bad file: every failure becomes a quarantine reason.
    """
    configure_reader(lenient=job.lenient)
    path = Path(job.path)
    try:
        header = read_header(path, lenient=job.lenient)
        check_acceptable(
            header, modalities=job.modalities, body_parts=job.body_parts, views=job.views
        )
        image = decode_to_training_image(
            path, transfer_syntax=header.transfer_syntax, size=job.size, lenient=job.lenient
        )
    except Rejected as rejected:
        return Outcome("quarantined", rejected.reason, rejected.detail)
    temporary = Path(job.cache_file + ".tmp.npy")
    np.save(temporary, image, allow_pickle=False)
    temporary.replace(job.cache_file)
    return Outcome(
        "accepted",
        transfer_syntax=header.transfer_syntax,
        sop_hash=salted_hash(job.salt, header.sop_instance_uid),
        study_hash=salted_hash(job.salt, header.study_instance_uid),
        accession_hash=salted_hash(job.salt, header.accession_number),
    )
