"""``clinfl model export``: a finished run folder to a self-contained model folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load

import clinfl
from clinfl.algorithms import ModelSpec
from clinfl.algorithms.base import is_auxiliary
from clinfl.config import MethodConfig
from clinfl.errors import CheckpointError
from clinfl.model_io.bundle import ModelBundle, read_bundle, write_bundle
from clinfl.model_io.frozen import run_method, with_frozen_tensors
from clinfl.thresholds import DEFAULT_THRESHOLD
from clinfl.typing import StateDict

RESULTS_FILE = "results.json"
FEDERATION_REPORT = "federation_report.json"


def _read_run_json(run_dir: Path, name: str) -> dict[str, Any]:
    path = run_dir / name
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {name}: it is not a finished clinfl run folder",
            remedy="pass the --out folder of a completed `clinfl simulate` run",
        )
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {type(exc).__name__}", remedy="check the run folder"
        ) from None
    if not isinstance(document, dict):
        raise CheckpointError(f"cannot read {path}: not a JSON object", remedy="check the run")
    return document


def _read_optional_run_json(run_dir: Path, name: str) -> dict[str, Any] | None:
    return _read_run_json(run_dir, name) if (run_dir / name).is_file() else None


def _label_space(config: dict[str, Any]) -> str:
    data = config["data"]
    return "digits" if data["dataset"] == "digits" else str(data["label_space"])


def _thresholds(best: dict[str, Any], class_names: tuple[str, ...]) -> dict[str, Any]:
    operating = best.get("operating")
    f1 = {
        "macro_at_0.5": best.get("macro_f1"),
        "micro_at_0.5": best.get("micro_f1"),
        "macro_at_thresholds": best.get("macro_f1_at_thresholds"),
        "micro_at_thresholds": best.get("micro_f1_at_thresholds"),
    }
    if operating is None:  # a run from before thresholds were chosen: every class keeps 0.5
        classes = {
            name: {"threshold": DEFAULT_THRESHOLD, "flagged": True, "test_auc_ci": None}
            for name in class_names
        }
        return {"rule": "none (0.5)", "chosen_on": "none", "classes": classes, "test_f1": f1}
    return {
        "rule": operating["rule"],
        "chosen_on": operating["chosen_on"],
        "selected_round": best["round"],
        "classes": operating["classes"],
        "bootstrap": operating.get("bootstrap"),
        "interval": operating.get("interval", "bootstrap 95%"),
        "test_f1": f1,
    }


def _provenance(
    run_dir: Path, results: dict[str, Any], report: dict[str, Any] | None, checkpoint: Path
) -> dict[str, Any]:
    config, best = results["config"], results["best"]
    privacy = [
        {
            "site": site["site_id"],
            "epsilon_spent": site.get("epsilon_spent"),
            "epsilon_budget": site.get("epsilon_budget"),
            "delta": site.get("delta"),
            "dp_enabled": site.get("dp_enabled"),
            "shared": site.get("reports", []),
        }
        for site in (report or {}).get("sites", [])
    ]
    return {
        "run_id": results.get("run_id"),
        "run_dir": str(run_dir),
        "method": results["method"],
        "dataset": config["data"]["dataset"],
        "data": results.get("data"),
        "sites": config["federation"]["sites"],
        "samples_per_site": (results.get("partition") or {}).get("samples_per_site"),
        "rounds_configured": config["federation"]["rounds"],
        "rounds_run": len(results.get("rounds", [])),
        "selected_round": best["round"],
        "selection": best.get("selection", config["federation"].get("selection")),
        "stopped": results.get("stopped"),
        "secure_aggregation": config.get("secagg"),
        "privacy": privacy,
        "init_weights": results.get("init_weights"),
        "test": {k: best.get(k) for k in ("macro_auc", "micro_auc", "per_class_auc")},
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "clinfl_version": clinfl.__version__,
    }


def export_run(run_dir: Path, out_dir: Path, *, include_etf_seed: bool = True) -> ModelBundle:
    """Export the selected round of the run in ``run_dir`` to the model folder ``out_dir``.

    The folder holds the selected global model (auxiliary algorithm state dropped), its
    config, the thresholds chosen on validation and the run's provenance (see
    :mod:`clinfl.model_io.bundle`). With ``include_etf_seed=False`` the federation seed is left
    out, and whoever predicts must supply it. The written folder is read back and checked.

    Raises:
        CheckpointError: if the run folder lacks a results file or a selected round, its
            checkpoint cannot be read, or the model folder cannot be written.
        ModelError: if the written folder does not read back.
    """
    results = _read_run_json(run_dir, RESULTS_FILE)
    best = results.get("best")
    if not best:
        raise CheckpointError(
            f"the run in {run_dir} completed no round, so there is no model to export",
            remedy="run (or --resume) the federation until a round completes",
        )
    checkpoint = run_dir / "checkpoints" / f"round-{int(best['round']):04d}.safetensors"
    try:
        state = {k: v for k, v in load(checkpoint.read_bytes()).items() if not is_auxiliary(k)}
    except (OSError, SafetensorError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {checkpoint}: {exc}", remedy="check the run's checkpoints folder"
        ) from None
    try:
        bundle = _bundle(run_dir, results, best, state, checkpoint, include_etf_seed)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{run_dir / RESULTS_FILE} is incomplete ({type(exc).__name__}: {exc})",
            remedy="export a run written by this clinfl version",
        ) from None
    write_bundle(bundle, out_dir)
    return read_bundle(out_dir)


def _bundle(
    run_dir: Path,
    results: dict[str, Any],
    best: dict[str, Any],
    state: StateDict,
    checkpoint: Path,
    include_etf_seed: bool,
) -> ModelBundle:
    config = results["config"]
    method_fields = {f.name for f in dataclasses.fields(MethodConfig)} - {"init_weights"}
    # a simulation records the classes with its partition; a deployment has none, and its
    # selected round's per-class AUC names them (in output order)
    partition = results.get("partition")
    class_names = tuple(
        partition["class_names"] if partition is not None else best["per_class_auc"]
    )
    federation = config["federation"]
    spec = ModelSpec(
        num_classes=len(class_names),
        image_size=int(config["data"]["image_size"]),
        federation_seed=int(federation["federation_seed"]),
        init_seed=int(federation["seed"]),
    )
    state = with_frozen_tensors(
        state,
        method=run_method(config, method_fields | {"init_weights"}),
        spec=spec,
        recorded=results.get("init_weights"),
    )
    return ModelBundle(
        method=MethodConfig(**{k: v for k, v in config["method"].items() if k in method_fields}),
        label_space=_label_space(config),
        class_names=class_names,
        image_size=int(config["data"]["image_size"]),
        init_seed=int(federation["seed"]),
        federation_seed=int(federation["federation_seed"]) if include_etf_seed else None,
        state=state,
        thresholds=_thresholds(best, class_names),
        provenance=_provenance(
            run_dir,
            results,
            _read_optional_run_json(run_dir, FEDERATION_REPORT),
            checkpoint,
        ),
        init_weights=results.get("init_weights"),
    )
