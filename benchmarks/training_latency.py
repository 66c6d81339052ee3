"""The timing channel: does a site's ``train_round`` latency give its sample count away?

An attacker's review of the deployed path found that ``train_round`` latency followed a site's
step count (correlation 0.997 over 6 sites, each count estimated to within about 2 samples),
with no metric reported. By epochs a round takes ``local_epochs * ceil(N / batch)`` steps; with
``federation.local_steps`` it takes that many full batches whatever N is (SECAGG.md,
"Version 3", R7').

This builds plain sites (no DP) of several sizes from the digits training set and times
``SiteTrainer.train_round`` on the same global model, by epochs and with fixed steps, in an
interleaved random order. For each mode it reports the Pearson correlation between latency and
N, and how well a coordinator predicts N from latency: a least-squares line N ~ latency, scored
leave-one-size-out (fitted on the other sizes, then asked each held-out site's N, from one call
and from the median of its calls), against the no-information guess (the mean of the other
sizes). Results go to ``benchmarks/results/training_latency.json``.

    python benchmarks/training_latency.py            # 6 sizes, 40..400 samples, 15 repetitions
    python benchmarks/training_latency.py --reps 3   # quicker

Run it on an otherwise idle machine: other load makes the timings noisy in both modes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info  # noqa: E402
from clinfl.algorithms import ModelSpec, create_algorithm  # noqa: E402
from clinfl.config import MethodConfig  # noqa: E402
from clinfl.data.digits import load_digit_composites  # noqa: E402
from clinfl.federation.messages import RoundSettings  # noqa: E402
from site_agent.training import plain_trainer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "training_latency.json"
SIZES = (40, 112, 184, 256, 328, 400)
BATCH = 16
IMAGE_SIZE = 16
METHOD = MethodConfig(name="fedavg", backbone="small", width=8)


def _cpu_jiffies() -> tuple[int, int] | None:
    """Return (busy, total) CPU jiffies of the whole machine (None where /proc is missing)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    except OSError:
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_load(before: tuple[int, int] | None, own_before: float) -> float | None:
    """Return the share of the machine's CPU that other processes used since ``before``."""
    after = _cpu_jiffies()
    if before is None or after is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (after[0] - before[0]) / ticks
    total = (after[1] - before[1]) / ticks
    return max(busy - (_own_cpu_seconds() - own_before), 0.0) / max(total, 1e-9)


def pearson(xs: list[float], ys: list[float]) -> float:
    """Return the Pearson correlation of two equally long samples."""
    return float(np.corrcoef(np.asarray(xs), np.asarray(ys))[0, 1])


def leave_one_size_out(latency: dict[int, list[float]]) -> dict[str, float]:
    """Predict each size's N from its latency with a line fitted on the other sizes.

    Per call: the line is fitted on every call of the other sizes and asked each held-out call.
    Per site: on the other sizes' median latencies, asked the held-out site's median (what a
    coordinator that times a site over several rounds sees). Returns the mean absolute errors,
    in samples, and that of the no-information guess (the other sizes' mean N).
    """
    call_errors, site_errors, guess_errors = [], [], []
    medians = {n: statistics.median(times) for n, times in latency.items()}
    for held in latency:
        others = [(n, t) for n, times in latency.items() if n != held for t in times]
        slope, intercept = np.polyfit([t for _, t in others], [n for n, _ in others], 1)
        call_errors += [abs(slope * t + intercept - held) for t in latency[held]]
        rest = [n for n in latency if n != held]
        slope, intercept = np.polyfit([medians[n] for n in rest], rest, 1)
        site_errors.append(abs(slope * medians[held] + intercept - held))
        guess_errors.append(abs(statistics.fmean(rest) - held))
    return {
        "fit_mean_abs_error_samples": statistics.fmean(call_errors),
        "median_fit_mean_abs_error_samples": statistics.fmean(site_errors),
        "guess_mean_abs_error_samples": statistics.fmean(guess_errors),
    }


def summarise(latency: dict[int, list[float]], steps: dict[int, int]) -> dict[str, Any]:
    """Correlation, fit quality and per-size medians of one mode's timings."""
    ns = [float(n) for n, times in latency.items() for _ in times]
    ts = [t for times in latency.values() for t in times]
    slope, intercept = np.polyfit(np.asarray(ts), np.asarray(ns), 1)
    predicted = [slope * t + intercept for t in ts]
    residual = sum((p - n) ** 2 for p, n in zip(predicted, ns, strict=True))
    total = sum((n - statistics.fmean(ns)) ** 2 for n in ns)
    return {
        "pearson_latency_vs_samples": pearson(ts, ns),
        "pearson_median_latency_vs_samples": pearson(
            [statistics.median(times) for times in latency.values()],
            [float(n) for n in latency],
        ),
        "fit_r2_in_sample": 1 - residual / total,
        **leave_one_size_out(latency),
        "per_size": {
            str(n): {
                "steps": steps[n],
                "median_seconds": statistics.median(times),
                "seconds": times,
            }
            for n, times in latency.items()
        },
    }


def main() -> None:
    """Time every site in both modes and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="timed calls per site and mode")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train = load_digit_composites(seed=0, image_size=IMAGE_SIZE).train
    order = np.random.default_rng(0).permutation(len(train))
    algorithm = create_algorithm(METHOD)
    spec = ModelSpec(
        num_classes=train.num_classes, image_size=IMAGE_SIZE, federation_seed=1, init_seed=0
    )
    state = algorithm.initial_state(algorithm.build_model(spec))
    trainers = {
        n: plain_trainer(f"site-{n}", train.subset(order[:n]), algorithm, spec, weight_decay=0.01)
        for n in SIZES
    }
    local_steps = math.ceil(statistics.fmean(SIZES) / BATCH)  # the mean site's epoch
    modes = {
        "epochs": RoundSettings(round=1, local_epochs=1, batch_size=BATCH, lr=1e-3),
        "fixed_steps": RoundSettings(
            round=1, local_epochs=1, batch_size=BATCH, lr=1e-3, local_steps=local_steps
        ),
    }
    latency: dict[str, dict[int, list[float]]] = {mode: {n: [] for n in SIZES} for mode in modes}
    steps: dict[str, dict[int, int]] = {mode: {} for mode in modes}
    for trainer in trainers.values():  # warm-up: first-call allocations are not the channel
        trainer.train_round(state, modes["epochs"])
    shuffle = random.Random(0)
    calls = [(mode, n) for mode in modes for n in SIZES]
    started = time.perf_counter()
    load_before, jiffies, own = os.getloadavg(), _cpu_jiffies(), _own_cpu_seconds()
    for _ in range(args.reps):
        shuffle.shuffle(calls)
        for mode, n in calls:
            began = time.perf_counter()
            update = trainers[n].train_round(state, modes[mode])
            latency[mode][n].append(time.perf_counter() - began)
            steps[mode][n] = update.steps
    results = {
        "benchmark": "training_latency",
        "what": "SiteTrainer.train_round latency against the site's sample count, plain "
        "training, the same global model every call",
        "machine": machine_info(),
        "settings": {
            "sizes": list(SIZES),
            "batch_size": BATCH,
            "image_size": IMAGE_SIZE,
            "method": "fedavg",
            "backbone": METHOD.backbone,
            "width": METHOD.width,
            "reps": args.reps,
            "local_epochs": 1,
            "local_steps": local_steps,
        },
        "modes": {mode: summarise(latency[mode], steps[mode]) for mode in modes},
        "seconds": time.perf_counter() - started,
        # how quiet the machine was: other processes' share of all CPU time during the timing
        "other_processes_cpu_share": other_load(jiffies, own),
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for mode, summary in results["modes"].items():
        print(
            f"{mode}: r = {summary['pearson_latency_vs_samples']:.3f} (medians "
            f"{summary['pearson_median_latency_vs_samples']:.3f}), N predicted from latency to "
            f"within {summary['fit_mean_abs_error_samples']:.1f} samples from one call, "
            f"{summary['median_fit_mean_abs_error_samples']:.1f} from the median "
            f"(no-information guess: {summary['guess_mean_abs_error_samples']:.1f})"
        )
    print(f"other processes' CPU share while timing: {results['other_processes_cpu_share']}")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
