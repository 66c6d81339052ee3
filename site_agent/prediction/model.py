"""Rebuilding a model folder's network at the site, with the ETF derived from the seed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from clinfl.algorithms import ModelSpec, available_algorithms, create_algorithm
from clinfl.config import MethodConfig
from clinfl.errors import FederationError, ModelError
from clinfl.model_io import ModelBundle
from clinfl.weights.provenance import pretrained_set
from site_agent.model_state import load_travelling_state


def load_bundle_model(
    bundle: ModelBundle, *, federation_seed: int, device: torch.device | None = None
) -> nn.Module:
    """Return the bundle's network in eval mode, its weights loaded, on ``device``.

    Every parameter must be in the folder, the blocks that never trained included, so a
    prediction never depends on a weights file or cache at the site.

    Raises:
        ModelError: if the method is unknown here, or the weights do not fit the network the
            config describes (another label space, image size or method), or lack a tensor.
    """
    if bundle.method.name not in available_algorithms():
        raise ModelError(
            f"the model folder's method {bundle.method.name!r} is not known to this clinfl",
            remedy="use the clinfl version that trained it",
        )
    spec = ModelSpec(
        num_classes=len(bundle.class_names),
        image_size=bundle.image_size,
        federation_seed=federation_seed,
        init_seed=bundle.init_seed,
        load_initial_weights=False,  # the folder holds every tensor, frozen blocks included
    )
    model = create_algorithm(_network_method(bundle)).build_model(spec)
    expected = {name for name, _ in model.named_parameters()} | {
        name for name in model.state_dict() if name.endswith(("running_mean", "running_var"))
    }
    missing = sorted(expected - set(bundle.state))
    try:
        if missing:
            raise FederationError(f"weights lack {', '.join(missing[:3])}", remedy="")
        load_travelling_state(model, bundle.state)
    except FederationError as error:
        raise ModelError(
            f"the model folder's weights do not fit its {bundle.method.name} network for "
            f"{len(bundle.class_names)} {bundle.label_space} classes: {error.message}",
            remedy="export the model folder again from its run",
        ) from None
    model.eval()
    return model.to(device or torch.device("cpu"))


def _network_method(bundle: ModelBundle) -> MethodConfig:
    """Return the method config that builds the bundle's network shape.

    A backbone that started from a user's weights file has its BatchNorm folded, one from
    random weights has GroupNorm: the bundle's ``init_weights`` record says which. The file
    is never read (its tensors are in the folder), so a placeholder name stands for it.
    """
    method = bundle.method
    record = bundle.init_weights
    if record is not None and method.init_weights is None and pretrained_set(method) is None:
        method = replace(method, init_weights=Path(record.get("file") or "initial-weights"))
    return method
