from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from clinfl.algorithms import ModelSpec, available_algorithms, create_algorithm
from clinfl.config import MethodConfig
from clinfl.errors import ModelError
from clinfl.model.backbones.resnet import (
    ResNet18Features,
    SafeBasicBlock,
    StemKind,
    load_resnet18_weights,
)
from clinfl.model.ladm import LabelAttention
from clinfl.model.networks import FedNCAlignNet

SPEC = ModelSpec(num_classes=6, image_size=16, federation_seed=7, init_seed=0)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedncalign"])
def test_etf_is_absent_from_every_update(name: str) -> None:
    algorithm = create_algorithm(MethodConfig(name=name))
    model = algorithm.build_model(SPEC)
    update = algorithm.travelling_state(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(update) == trainable
    assert not any("etf" in key for key in update)
    if name == "fedncalign":
        assert isinstance(model, FedNCAlignNet)
        etf = model.etf.prototypes
        for tensor in update.values():
            assert tensor.shape != etf.shape or not torch.equal(tensor, etf)
        assert not any("etf" in key for key in model.state_dict())


def test_batchnorm_statistics_travel_but_etf_does_not() -> None:
    algorithm = create_algorithm(MethodConfig(name="fedncalign", norm="batch"))
    update = algorithm.travelling_state(algorithm.build_model(SPEC))
    assert any(key.endswith("running_mean") for key in update)
    assert not any("num_batches_tracked" in key or "etf" in key for key in update)


def test_same_init_seed_gives_same_model_without_touching_global_rng() -> None:
    algorithm = create_algorithm(MethodConfig())
    before = torch.random.get_rng_state()
    a = algorithm.travelling_state(algorithm.build_model(SPEC))
    b = algorithm.travelling_state(algorithm.build_model(SPEC))
    assert torch.equal(before, torch.random.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_attention_matches_nn_multihead_attention() -> None:
    torch.manual_seed(0)
    dim, heads = 32, 4
    ours = LabelAttention(dim, heads=heads)
    reference = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        weight = torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        bias = torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias])
        reference.in_proj_weight.copy_(weight)
        reference.in_proj_bias.copy_(bias)
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    queries = torch.randn(5, dim)
    feature_map = torch.randn(3, dim, 2, 3)
    tokens = feature_map.flatten(2).transpose(1, 2)
    expected, _ = reference(queries.expand(3, -1, -1), tokens, tokens)
    assert torch.allclose(ours(queries, feature_map), expected, atol=1e-5)


def test_label_attention_takes_an_empty_batch() -> None:
    """Poisson sampling under DP-SGD can draw an empty batch; LADM must give ``[0, C, d]``."""
    attention = LabelAttention(32, heads=4)
    queries = torch.randn(5, 32, requires_grad=True)
    out = attention(queries, torch.randn(0, 32, 4, 4))
    assert out.shape == (0, 5, 32)
    out.sum().backward()
    assert queries.grad is not None and not queries.grad.any()


def test_backbone_has_no_inplace_operations() -> None:
    backbone = ResNet18Features(stem="small")
    for module in backbone.modules():
        if isinstance(module, nn.ReLU):
            assert not module.inplace
    blocks = [m for m in backbone.modules() if isinstance(m, SafeBasicBlock)]
    assert len(blocks) == 8
    # A view of the input must survive the forward pass unmodified (no in-place writes).
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    out = blocks[0](x)
    out.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize(
    ("stem", "size", "expected"),
    [
        ("small", 16, 2),
        ("standard", 64, 2),
        ("small", 32, 4),
        ("compact", 32, 4),
        ("compact", 64, 8),
    ],
)
def test_backbone_feature_map_shape(stem: StemKind, size: int, expected: int) -> None:
    backbone = ResNet18Features(stem=stem)
    out = backbone(torch.randn(2, 1, size, size))
    assert out.shape == (2, 512, expected, expected)


def test_compact_stem_keeps_small_weights_and_map_at_less_compute() -> None:
    """Same tensors and token map as the small stem; the first stages see half the resolution."""
    torch.manual_seed(3)
    small = ResNet18Features(stem="small", width=16)
    torch.manual_seed(3)
    compact = ResNet18Features(stem="compact", width=16)
    for (name, a), (other, b) in zip(
        small.state_dict().items(), compact.state_dict().items(), strict=True
    ):
        assert name == other and torch.equal(a, b)
    seen = {"small": _stage_sizes(small, 32), "compact": _stage_sizes(compact, 32)}
    assert seen["small"] == {"layer1": 32, "layer2": 16, "layer3": 8, "layer4": 4}
    assert seen["compact"] == {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 4}


def _stage_sizes(net: ResNet18Features, size: int) -> dict[str, int]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(torch.randn(1, 3, size, size)))))
    sizes = {}
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, stage)(x)
        sizes[stage] = int(x.shape[-1])
    return sizes


def test_unknown_stem_is_refused() -> None:
    with pytest.raises(ModelError, match="stem"):
        ResNet18Features(stem="tiny")  # type: ignore[arg-type]


def test_ablation_switches_change_the_trainable_tensors() -> None:
    def names(**kwargs: object) -> set[str]:
        algorithm = create_algorithm(MethodConfig(name="fedncalign", **kwargs))  # type: ignore[arg-type]
        return set(algorithm.travelling_state(algorithm.build_model(SPEC)))

    base = names()
    assert any(k.startswith("ladm.") for k in base)
    assert not any(k.startswith("ladm.") for k in names(ladm=False))
    assert "queries.weight" in names(queries="learnable") and "queries.weight" not in base
    assert "classifier.weight" in names(classifier="learnable") and "classifier.weight" not in base


def test_fixed_etf_classifier_logits_are_projection_on_own_prototype() -> None:
    algorithm = create_algorithm(MethodConfig())
    model = algorithm.build_model(SPEC)
    model.eval()
    out = model(torch.randn(3, 1, 16, 16))
    assert out.class_features is not None and out.prototypes is not None
    assert out.bias is not None
    expected = torch.einsum("bcd,cd->bc", out.class_features, out.prototypes) + out.bias
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert isinstance(model, FedNCAlignNet)
    assert torch.equal(out.prototypes, model.etf.prototypes)


def test_local_weights_file_loads_and_bad_file_is_refused(tmp_path: Path) -> None:
    source = ResNet18Features(stem="standard", norm="batch")
    path = tmp_path / "resnet18.safetensors"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    save_file(state, str(path))
    target = ResNet18Features(stem="standard", norm="batch")
    load_resnet18_weights(target, path)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    with pytest.raises(ModelError, match=r"key 'conv1.weight' has shape \(64, 3, 7, 7\)"):
        load_resnet18_weights(ResNet18Features(stem="small"), path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read"):
        load_resnet18_weights(target, junk)


def test_registry_lists_the_three_algorithms_and_refuses_duplicates() -> None:
    from clinfl.algorithms import register_algorithm
    from clinfl.algorithms.fedavg import FedAvg

    assert {"fedavg", "fedprox", "fedncalign"} <= set(available_algorithms())
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm(FedAvg)


def test_fedprox_penalty_is_zero_at_global_weights_and_positive_away() -> None:
    algorithm = create_algorithm(MethodConfig(name="fedprox", prox_mu=0.5))
    model = algorithm.build_model(SPEC)
    state = {k: v.clone() for k, v in algorithm.travelling_state(model).items()}
    penalty = algorithm.regulariser(model, state, {})
    assert penalty is not None and penalty.item() == 0.0
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    moved = algorithm.regulariser(model, state, {})
    assert moved is not None
    expected = 0.5 * 0.5 * next(model.parameters()).numel()
    assert moved.item() == pytest.approx(expected, rel=1e-4)


def test_classifier_bias_starts_at_the_one_over_c_prior_and_can_be_switched_off() -> None:
    import math

    with_bias = create_algorithm(MethodConfig()).build_model(SPEC)
    assert isinstance(with_bias, FedNCAlignNet) and with_bias.bias is not None
    assert torch.allclose(with_bias.bias.linear.weight, torch.full((6, 1), -math.log(5)))
    without = create_algorithm(MethodConfig(classifier_bias=False)).build_model(SPEC)
    assert isinstance(without, FedNCAlignNet) and without.bias is None
    without.eval()
    out = without(torch.randn(2, 1, 16, 16))
    assert out.bias is None and out.class_features is not None and out.prototypes is not None
    assert torch.allclose(
        out.logits, torch.einsum("bcd,cd->bc", out.class_features, out.prototypes), atol=1e-5
    )
