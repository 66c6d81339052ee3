"""Round-by-round LADM and L_rej diagnostics of single FedNCAlign-ML runs (docs/method.md).

Each run is one in-process federation (5 sites, digits composites, seed 0, setting 1); every
round's test macro-AUC and the evaluator's model diagnostics (attention entropy, class-feature
cosine, share of negative pairs L_rej is active on, mean probability of positive and negative
pairs) are appended to ``benchmarks/results/ladm_probe.json``.

    python benchmarks/ladm_probe.py --lr 1e-3 --image-size 16 --width 64 --rounds 8 --quick-data
    python benchmarks/ladm_probe.py --lr 1e-3 --image-size 32 --width 16 --rounds 10 \\
        --query-scaling layernorm

``--quick-data`` uses the quick preset's 300 composites (3 per digit pair) instead of all.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clinfl.config import DataConfig, FederationConfig, MethodConfig, RunConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ladm_probe.json"


def main() -> None:
    """Run one probe and append its rounds to the results file."""
    import torch

    from clinfl.simulation import run_simulation

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--query-scaling", default="none")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--quick-data", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = {"max_samples": 300, "composites_per_pair": 3} if args.quick_data else {}
    config = RunConfig(
        data=DataConfig(dataset="digits", image_size=args.image_size, **data),
        method=MethodConfig(name="fedncalign", width=args.width, query_scaling=args.query_scaling),
        federation=FederationConfig(sites=5, rounds=args.rounds, lr=args.lr, seed=0),
    )
    with tempfile.TemporaryDirectory() as run_dir:
        summary = run_simulation(config, Path(run_dir)).summary
    record = {
        "lr": args.lr,
        "image_size": args.image_size,
        "width": args.width,
        "query_scaling": args.query_scaling,
        "quick_data": args.quick_data,
        "rounds": summary["rounds"],
    }
    runs = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": [*runs, record]}, indent=2))
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
