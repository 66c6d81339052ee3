"""Where fetched weights live on this machine, and how training finds them.

The cache folder is ``$CLINFL_WEIGHTS_DIR`` when set, else ``$XDG_CACHE_HOME/clinfl/weights``
(``~/.cache/clinfl/weights`` without XDG). Each named weights set is one safetensors file,
``<name>.safetensors``, holding tensors under the architecture's own key names. Nothing in this
module touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from clinfl.errors import ModelError

CACHE_ENV = "CLINFL_WEIGHTS_DIR"
MOBILENET_V2_IMAGENET = "mobilenet_v2-imagenet"
"""ImageNet MobileNetV2 feature weights (torchvision ``mobilenet_v2().features`` key names)."""


def weights_cache_dir() -> Path:
    """Return the weights cache folder (it need not exist yet)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "clinfl" / "weights"


def weights_path(name: str) -> Path:
    """Return where the named weights set is (or would be) stored in the cache."""
    return weights_cache_dir() / f"{name}.safetensors"


def cached_weights(name: str) -> Path:
    """Return the cached file of the named weights set.

    Raises:
        ModelError: if it has not been fetched, with the command that fetches it.
    """
    path = weights_path(name)
    if not path.is_file():
        raise ModelError(
            f"the pretrained weights {name!r} are not in the cache ({path})",
            remedy=f"run `clinfl weights fetch {name}` once (or `make weights`), "
            f"set {CACHE_ENV} to the folder that holds them, or give --init-weights FILE",
        )
    return path
