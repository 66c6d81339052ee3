"""Ingestion speed on an export made with `clinfl data make-export` from NIH1000.

    python benchmarks/ingest.py            # needs ../shared/data/nih1000 (--quick = --full)

Measures header scan, decode per transfer syntax, a whole first ingest with 1 and 2 workers, a
re-run on the unchanged export, and a cached epoch read: every accepted image from the site's
pack (one array file, what a re-run and training read), and one cached file per image.
Results go to benchmarks/results/ingest.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402
from clinfl.data.make_export import make_export  # noqa: E402
from site_agent.ingest.decode import configure_reader, decode_to_training_image  # noqa: E402
from site_agent.ingest.header import Rejected, read_header  # noqa: E402
from site_agent.ingest.index import IngestIndex  # noqa: E402
from site_agent.ingest.pipeline import IngestOptions, ingest_export  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ingest.json"


def _files(export: Path) -> list[Path]:
    return sorted(p for p in export.rglob("*") if p.is_file() and p.name != "labels.csv")


def measure(export: Path, work: Path) -> dict[str, Any]:
    """Run every measurement on ``export``, using ``work`` for state folders."""
    files = _files(export)
    configure_reader(lenient=False)
    started = time.perf_counter()
    headers = {}
    for path in files:
        with contextlib.suppress(Rejected):
            headers[path] = read_header(path, lenient=False)
    scan = time.perf_counter() - started
    by_syntax: dict[str, list[float]] = defaultdict(list)
    for path, header in headers.items():
        started = time.perf_counter()
        try:
            decode_to_training_image(
                path, transfer_syntax=header.transfer_syntax, size=64, lenient=False
            )
        except Rejected:
            continue
        by_syntax[header.transfer_syntax].append(time.perf_counter() - started)
    runs = {}
    for workers in (1, 2):
        state = work / f"state-{workers}"
        started = time.perf_counter()
        first = ingest_export(export, state_dir=state, options=IngestOptions(workers=workers))
        first_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ingest_export(export, state_dir=state, options=IngestOptions(workers=workers))
        rerun_seconds = time.perf_counter() - started
        runs[workers] = {
            "first_seconds": first_seconds,
            "first_files_per_second": len(files) / first_seconds,
            "rerun_seconds": rerun_seconds,
            "rerun_fraction": rerun_seconds / first_seconds,
            "accepted": first.summary["accepted"],
        }
    index = IngestIndex(work / "state-1")
    cached = sorted(p for p in index.cache_dir.glob("*.npy") if not p.name.startswith("pack-"))
    started = time.perf_counter()
    for path in cached:
        sha, size = path.stem.rsplit("-", 1)
        index.load_image(sha, int(size))
    epoch = time.perf_counter() - started
    (pack,) = index.cache_dir.glob("pack-*.npy")
    pack_times = []
    for _ in range(5):
        started = time.perf_counter()
        packed = np.load(pack, allow_pickle=False)
        pack_times.append(time.perf_counter() - started)
    pack_epoch = min(pack_times)
    index.close()
    decode_total = sum(sum(v) for v in by_syntax.values())
    decoded = sum(len(v) for v in by_syntax.values())
    return {
        "files": len(files),
        "header_scan_files_per_second": len(files) / scan,
        "decode_files_per_second": {
            syntax_name(uid): len(times) / sum(times) for uid, times in sorted(by_syntax.items())
        },
        "decode_all_files_per_second": decoded / decode_total,
        "ingest": runs,
        "cached_epoch_images_per_second": len(packed) / pack_epoch,
        "cached_epoch_speedup_over_decode": (len(packed) / pack_epoch) / (decoded / decode_total),
        "cached_file_per_image_images_per_second": len(cached) / epoch,
        "cached_file_per_image_speedup_over_decode": (len(cached) / epoch)
        / (decoded / decode_total),
    }


def syntax_name(uid: str) -> str:
    """Return the transfer syntax's name."""
    from pydicom.uid import UID

    return str(UID(uid).name)


def main() -> None:
    """Make the export, measure, save JSON, regenerate the docs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="all 1,000 images (the default)")
    preset.add_argument("--full", action="store_true", help="the same: NIH1000 is small")
    parser.add_argument("--limit", type=int, default=None, help="export at most this many images")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    nih = ROOT.parent / "shared" / "data" / "nih1000"
    if not nih.is_dir():
        raise SystemExit(f"{nih} is missing: this benchmark needs ../shared/data/nih1000")
    with tempfile.TemporaryDirectory() as folder:
        export = Path(folder) / "export"
        make_export(nih, nih / "labels.csv", export, limit=args.limit)
        result = measure(export, Path(folder))
    document = {
        "machine": machine_info(),
        "preset": "full" if args.full else "quick",
        "source": "NIH1000 via make-export",
        **result,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(document, indent=2))
    write_docs()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
