"""Secure-aggregation cost: clinfl's SecAgg+ against plain aggregation and Flower's SecAgg+.

For each vector length and site count, one round runs in this process: every site's stages
(timed one site at a time; in a deployment the sites run in parallel, so the slowest site is the
wall-clock cost) and the coordinator's. No dropouts. The same float32 updates and sample counts
go to clinfl, to a plain weighted mean, and to Flower's SecAgg+ (the pinned release) (driven through its own
functions, see ``benchmarks/flower_secaggplus.py``) with the same neighbourhood size and
threshold. Results go to ``benchmarks/results/secagg.json`` and ``docs/benchmarks.md``.

    python benchmarks/secagg.py --quick     # 1M values x all site counts, 11M x 5 and 10 sites
    python benchmarks/secagg.py --full      # 1M and 11M values x 5, 10, 20, 50, 100 sites
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.flower_secaggplus import (  # noqa: E402
    ADVERTISE,
    CONSISTENCY,
    GRAPH,
    MASKED_INPUT,
    SHARE,
    UNMASK,
    StageTimes,
    flower_version,
    run_flower_secaggplus,
)
from benchmarks.machine import machine_info  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402
from clinfl.secagg.encoding import decode_sum, encode_update  # noqa: E402
from clinfl.secagg.hazmat.prg import add_mask_stream, mask_stream  # noqa: E402
from clinfl.secagg.messages import MaskedInput  # noqa: E402
from clinfl.secagg.server_session import ServerSession  # noqa: E402
from clinfl.secagg.settings import SecAggRequirements, plan_round  # noqa: E402
from clinfl.secagg.site_session import SiteSession  # noqa: E402
from clinfl.secagg.transcript import RoundBinding, digest, directory_hash  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "secagg.json"
QUICK = [(1_000_000, n) for n in (5, 10, 20, 50, 100)] + [(11_000_000, n) for n in (5, 10)]
FULL = [(length, n) for length in (1_000_000, 11_000_000) for n in (5, 10, 20, 50, 100)]


def _inputs(length: int, n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    updates = [(rng.standard_normal(length) * 0.01).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in rng.integers(50, 1000, n)]
    return updates, weights


def _weighted_mean(updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    total = np.zeros_like(updates[0])
    for update, weight in zip(updates, weights, strict=True):
        total += update * np.float32(weight)
    total /= np.float32(sum(weights))
    return total


def run_plain(updates: list[np.ndarray], weights: list[int]) -> tuple[dict[str, float], np.ndarray]:
    """Time the plain round: each site scales its update, the coordinator sums and divides."""
    started = time.perf_counter()
    scaled = [u * np.float32(w) for u, w in zip(updates, weights, strict=True)]
    site_total = time.perf_counter() - started
    started = time.perf_counter()
    total = np.zeros_like(updates[0])
    for vector in scaled:
        total += vector
    total /= np.float32(sum(weights))
    coordinator = time.perf_counter() - started
    return {"site_max": site_total / len(updates), "coordinator": coordinator}, total


def run_clinfl(
    updates: list[np.ndarray], weights: list[int]
) -> tuple[StageTimes, np.ndarray, dict[str, int]]:
    """Run one clinfl SecAgg+ round; return timings, the decoded mean and the graph shape."""
    n, length = len(updates), updates[0].shape[0]
    ids = tuple(f"site-{k:03d}" for k in range(n))
    signing = {s: Ed25519PrivateKey.generate() for s in ids}
    directory = {s: k.public_key() for s, k in signing.items()}
    params = plan_round(run_id="bench", round_id=1, site_ids=ids, vector_length=length, min_sites=3)
    times = StageTimes()
    rng = np.random.default_rng(1)
    model_hash, settings_hash = digest(b"bench-model"), digest(b"bench-settings")
    binding = RoundBinding(
        roster_hash=directory_hash(directory),
        run_id=params.run_id,
        round_id=params.round_id,
        params_hash=params.bound_to(settings_hash),
        model_hash=model_hash,
        config_hash=digest(b"bench-config"),
    )
    sessions = {
        s: SiteSession(
            params,
            site_id=s,
            signing_key=signing[s],
            directory=directory,
            requirements=SecAggRequirements(),
            binding=binding,
        )
        for s in ids
    }

    def timed(stage: str, site: str, call: Any) -> Any:
        started = time.perf_counter()
        result = call()
        times.add_site(stage, time.perf_counter() - started)
        return result

    started = time.perf_counter()
    server = ServerSession(params)
    times.coordinator["setup"] = time.perf_counter() - started
    adverts = [timed(ADVERTISE, s, sessions[s].advertise) for s in ids]
    started = time.perf_counter()
    relayed = server.relay_advertisements(adverts)
    times.coordinator[ADVERTISE] = time.perf_counter() - started
    times.bytes_per_site[ADVERTISE] = 32 * 3 + 64 + len(ids[0]) + 5 * 32 + 16
    opened = [timed(GRAPH, s, lambda s=s: sessions[s].reveal_graph_nonce(relayed)) for s in ids]
    started = time.perf_counter()
    reveals = server.relay_graph_reveals(opened)
    times.coordinator[GRAPH] = time.perf_counter() - started
    times.bytes_per_site[GRAPH] = 32 + len(ids[0]) + 8
    shares = {s: timed(SHARE, s, lambda s=s: sessions[s].share(reveals)) for s in ids}
    times.bytes_per_site[SHARE] = max(
        sum(len(x.sealed) + len(x.sender) + len(x.receiver) + 8 for x in v) for v in shares.values()
    )
    started = time.perf_counter()
    inbox = server.route_shares(shares)
    times.coordinator[SHARE] = time.perf_counter() - started
    site_seconds = 0.0

    def arriving() -> Iterator[MaskedInput]:
        nonlocal site_seconds
        for site, update, weight in zip(ids, updates, weights, strict=True):
            started = time.perf_counter()
            encoded = encode_update(update, num_samples=weight, params=params, rng=rng)
            masked = sessions[site].masked_input(inbox[site], encoded)
            elapsed = time.perf_counter() - started
            times.add_site(MASKED_INPUT, elapsed)
            site_seconds += elapsed
            times.bytes_per_site[MASKED_INPUT] = masked.vector.nbytes
            yield masked

    started = time.perf_counter()
    survivors = server.add_masked_inputs(arriving())
    times.coordinator[MASKED_INPUT] = time.perf_counter() - started - site_seconds
    signatures = [
        timed(CONSISTENCY, s, lambda s=s: sessions[s].sign_survivors(survivors)) for s in ids
    ]
    times.bytes_per_site[CONSISTENCY] = 64 + len(ids[0])
    started = time.perf_counter()
    server.collect_signatures(signatures)
    requests = {s: server.unmask_request(s) for s in ids}
    times.coordinator[CONSISTENCY] = time.perf_counter() - started
    revealed = [timed(UNMASK, s, lambda s=s: sessions[s].reveal(requests[s])) for s in ids]
    times.bytes_per_site[UNMASK] = max(
        70 * (len(r.self_mask_shares) + len(r.mask_key_shares)) for r in revealed
    )
    started = time.perf_counter()
    total = server.unmask(revealed)
    mean = decode_sum(total, params=params).mean
    times.coordinator[UNMASK] = time.perf_counter() - started
    return times, mean, {"degree": params.degree, "threshold": params.threshold}


def _raw_aes_ctr_one_shot(seed: bytes, nbytes: int) -> None:
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    encryptor.update(bytes(nbytes))
    encryptor.finalize()


def _raw_aes_ctr_chunked(seed: bytes, out: bytearray, chunk: bytes) -> None:
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    view = memoryview(out)
    for offset in range(0, len(out) - 15, len(chunk)):
        encryptor.update_into(chunk, view[offset : offset + len(chunk) + 15])
    encryptor.finalize()


def prg_throughput(length: int) -> dict[str, float]:
    """GB/s of the mask PRG against plain ``cryptography`` AES-256-CTR on the same bytes.

    The PRG is timed as the protocol uses it (``add_mask_stream`` folding the stream into a
    vector) and as a standalone array (``mask_stream``).

    The length is rounded down to whole 1 MiB chunks (at least one). Raw AES-CTR is timed two
    ways: one ``update`` over the whole zero buffer, and ``update_into`` over 1 MiB chunks into a
    preallocated buffer (the cipher's speed without allocation).
    """
    seed = os.urandom(32)
    chunk = bytes(1 << 20)
    nbytes = max(len(chunk), 4 * length - (4 * length) % len(chunk))
    out = bytearray(nbytes + 15)
    target = np.zeros(nbytes // 4, dtype=np.uint32)
    timings: dict[str, list[float]] = {"prg": [], "stream": [], "one_shot": [], "chunked": []}
    calls = {
        "prg": lambda: add_mask_stream(target, seed, bits=32),
        "stream": lambda: mask_stream(seed, nbytes // 4, bits=32),
        "one_shot": lambda: _raw_aes_ctr_one_shot(seed, nbytes),
        "chunked": lambda: _raw_aes_ctr_chunked(seed, out, chunk),
    }
    for _ in range(5):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - started)
    rate = {name: nbytes / statistics.median(t) / 1e9 for name, t in timings.items()}
    return {
        "bytes": nbytes,
        "prg_gb_s": rate["prg"],
        "stream_gb_s": rate["stream"],
        "aes_ctr_one_shot_gb_s": rate["one_shot"],
        "aes_ctr_gb_s": rate["chunked"],
        "ratio": max(rate["one_shot"], rate["chunked"]) / rate["prg"],
    }


def _round_seconds(times: StageTimes) -> dict[str, float]:
    site_max = sum(times.site_max.values())
    site_total = sum(times.site_total.values())
    coordinator = sum(times.coordinator.values())
    return {
        "site_max": site_max,
        "site_total": site_total,
        "coordinator": coordinator,
        "parallel_round": site_max + coordinator,
    }


def measure(length: int, n: int, *, with_flower: bool) -> dict[str, Any]:
    """Measure one configuration (clinfl, plain and, when installed, Flower)."""
    updates, weights = _inputs(length, n, seed=n)
    expected = _weighted_mean(updates, weights)
    plain_times, plain_mean = run_plain(updates, weights)
    clinfl_times, clinfl_mean, graph = run_clinfl(updates, weights)
    row: dict[str, Any] = {
        "values": length,
        "sites": n,
        **graph,
        "plain": {**plain_times, "max_error": float(np.abs(plain_mean - expected).max())},
        "clinfl": {
            "site_max": clinfl_times.site_max,
            "site_total": clinfl_times.site_total,
            "coordinator": clinfl_times.coordinator,
            "bytes_per_site": clinfl_times.bytes_per_site,
            "round": _round_seconds(clinfl_times),
            "max_error": float(np.abs(clinfl_mean - expected).max()),
        },
    }
    if with_flower:
        flower_times, flower_mean = run_flower_secaggplus(
            updates, weights, num_shares=graph["degree"] + 1, threshold=graph["threshold"]
        )
        row["flower"] = {
            "site_max": flower_times.site_max,
            "site_total": flower_times.site_total,
            "coordinator": flower_times.coordinator,
            "bytes_per_site": flower_times.bytes_per_site,
            "round": _round_seconds(flower_times),
            "max_error": float(np.abs(flower_mean - expected).max()),
        }
    return row


def measure_federation(rounds: int = 1) -> dict[str, Any]:
    """Time ``clinfl simulate``'s default federation with secure aggregation off and on."""
    from clinfl.config import FederationConfig, RunConfig, SecAggConfig
    from clinfl.federation.vectors import vector_length
    from clinfl.simulation import run_simulation

    seconds: dict[str, float] = {}
    values = 0
    base = RunConfig(federation=FederationConfig(rounds=rounds))
    for enabled in (False, True):
        config = dataclasses.replace(base, secagg=SecAggConfig(enabled=enabled))
        with tempfile.TemporaryDirectory() as run_dir:
            result = run_simulation(config, Path(run_dir))
        records = result.outcome.records
        seconds["secagg_on" if enabled else "secagg_off"] = statistics.mean(
            r.seconds for r in records
        )
        values = vector_length(result.outcome.final_state)
    return {"sites": base.federation.sites, "rounds": rounds, "values": values, **seconds}


def main() -> None:
    """Parse arguments, run the grid, save JSON and regenerate the docs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="1M x all sites, 11M x 5/10 (default)")
    preset.add_argument("--full", action="store_true", help="1M and 11M x 5..100 sites")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's SecAgg+")
    parser.add_argument(
        "--keep-grid",
        action="store_true",
        help="keep the grid rows already in --results; re-measure the PRG and the federation round",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    grid = FULL if args.full else QUICK
    version = None if args.no_flower else flower_version()
    if not args.no_flower and version is None:
        print("Flower is not installed: pip install 'clinfl[bench]' (skipping its columns)")
    previous = json.loads(args.results.read_text()) if args.keep_grid else {}
    rows = previous.get("rows", [])
    if args.keep_grid:
        grid = []
    for length, n in grid:
        started = time.perf_counter()
        row = measure(length, n, with_flower=version is not None)
        rows.append(row)
        print(
            f"{length:>10} values, {n:>3} sites: clinfl round "
            f"{row['clinfl']['round']['parallel_round']:.2f}s"
            + (
                f", flower {row['flower']['round']['parallel_round']:.2f}s"
                if "flower" in row
                else ""
            )
            + f" ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    lengths = sorted({row["values"] for row in rows})
    print("timing the in-process federation round, secure aggregation off and on", flush=True)
    document = {
        "machine": machine_info(),
        "flower": previous.get("flower", version),
        "preset": previous.get("preset") or ("full" if args.full else "quick"),
        "prg": [prg_throughput(length) for length in lengths],
        "federation": measure_federation(),
        "rows": rows,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(document, indent=2))
    write_docs()
    print(f"wrote {args.results} and docs/benchmarks.md")


if __name__ == "__main__":
    main()
