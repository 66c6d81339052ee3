"""Writing a file whole or not at all: every report, results file and checkpoint goes through here.

A reader (the operator, ``clinfl coordinator status``, a crashed run being resumed) sees either
the previous file or the new one, never a torn one: the data goes to a temporary file in the
same folder, is flushed to disk, and then renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from clinfl.errors import CheckpointError

DEFAULT_REMEDY = "check disk space and permissions"


def _temporary_path(path: Path) -> Path:
    """A name beside ``path`` no other writer (process or thread) uses at the same time."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def write_atomically(path: Path, data: bytes | str, *, remedy: str = DEFAULT_REMEDY) -> None:
    """Write ``data`` (text as UTF-8) to ``path``: temporary file, fsync, rename over ``path``.

    The file gets the usual permissions (the process umask applies), as a plain write would.

    Raises:
        CheckpointError: if the file cannot be written (``remedy`` says what to do).
    """
    payload = data.encode() if isinstance(data, str) else data
    temporary = _temporary_path(path)
    try:
        with open(temporary, "xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CheckpointError(f"cannot write {path}: {exc}", remedy=remedy) from exc
    _sync_folder(path.parent)


def write_json(path: Path, document: Any, *, remedy: str = DEFAULT_REMEDY) -> None:
    """Write ``document`` as indented JSON to ``path`` atomically.

    Raises:
        CheckpointError: if the file cannot be written.
    """
    write_atomically(path, json.dumps(document, indent=2), remedy=remedy)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it (best effort)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
