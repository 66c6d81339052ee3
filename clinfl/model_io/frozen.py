"""Completing an exported model with the blocks that never trained.

With ``train_blocks`` set, the leading backbone blocks keep their initial weights and never
travel, so the run's checkpoints do not hold them. A model folder must hold every tensor (a
prediction never reads a weights file or cache), so export rebuilds the network from the
run's initial weights, checks that they are the ones the run recorded, and adds the missing
tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import MethodConfig
from clinfl.errors import ModelError
from clinfl.typing import StateDict
from clinfl.weights.provenance import WeightsDocument, weights_provenance


def with_frozen_tensors(
    state: StateDict,
    *,
    method: MethodConfig,
    spec: ModelSpec,
    recorded: WeightsDocument | None,
) -> StateDict:
    """Return ``state`` plus every model tensor it lacks, taken from the initial weights.

    ``method`` is the run's method config with its ``init_weights`` path as the run used it.

    Raises:
        ModelError: if the initial weights are needed and cannot be found, or their SHA-256
            is not the one the run recorded (``recorded``).
    """
    if method.train_blocks is None:
        return state
    model = create_algorithm(method).build_model(spec)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    missing = [n for n in frozen if n not in state]
    if not missing:
        return state
    found = weights_provenance(method)
    expected = None if recorded is None else recorded.get("sha256")
    if found is not None and expected is not None and found.sha256 != expected:
        raise ModelError(
            f"the initial weights here (SHA-256 {found.sha256}) are not the ones the run "
            f"started from ({expected}), so the blocks that never trained cannot be restored",
            remedy="export on a machine with the run's initial weights file or cache",
        )
    return {**state, **{name: frozen[name].detach().clone() for name in missing}}


def run_method(config: dict[str, Any], fields: set[str]) -> MethodConfig:
    """Return the run's method config from ``results.json``'s ``config``, init weights kept."""
    method = {k: v for k, v in config["method"].items() if k in fields}
    if method.get("init_weights") is not None:
        method["init_weights"] = Path(method["init_weights"])
    return MethodConfig(**method)
