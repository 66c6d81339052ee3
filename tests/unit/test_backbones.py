"""Pretrained backbones: key layouts, the one-line misfit, BatchNorm folding, frozen blocks, DP-SGD."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import densenet121, mobilenet_v2

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import MethodConfig, RunConfig
from clinfl.config.backbones import block_count, feature_width
from clinfl.config.file import run_config_from_mapping
from clinfl.config.validation import validate_run_config
from clinfl.errors import ModelError, ValidationError
from clinfl.model.backbones.build import build_feature_backbone
from clinfl.model.backbones.densenet import (
    XRV_SCALE,
    DenseNet121Features,
    densenet_batchnorm_pairs,
)
from clinfl.model.backbones.folding import fold_batchnorms, sequential_pairs
from clinfl.model.backbones.inputs import ImageNetInput
from clinfl.model.backbones.mobilenet import MobileNetV2Features
from clinfl.model.backbones.resnet import ResNet18Features
from clinfl.weights.cache import CACHE_ENV

SPEC = ModelSpec(num_classes=4, image_size=32, federation_seed=3, init_seed=0)


def _nontrivial_statistics(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine weights (not 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, nn.BatchNorm2d):
                size = norm.num_features
                norm.running_mean.copy_(torch.rand(size, generator=generator) * 2 - 1)
                norm.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                norm.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                norm.bias.copy_(torch.rand(size, generator=generator) - 0.5)
    return module.eval()


@pytest.mark.parametrize("architecture", ["mobilenet_v2", "densenet121", "resnet18"])
def test_folded_network_equals_the_original_in_float64(architecture: str) -> None:
    torch.manual_seed(0)
    original: nn.Module
    if architecture == "mobilenet_v2":
        original = mobilenet_v2().features
    elif architecture == "densenet121":
        original = densenet121().features
    else:
        original = ResNet18Features(stem="standard", norm="batch")
    original = _nontrivial_statistics(original).double()
    folded = copy.deepcopy(original)
    if architecture == "mobilenet_v2":
        pairs = sequential_pairs(folded)
    elif architecture == "densenet121":
        pairs = densenet_batchnorm_pairs(folded)
    else:
        assert isinstance(folded, ResNet18Features)
        pairs = folded.batchnorm_pairs()
    fold_batchnorms(folded, pairs)

    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        expected, got = original(images), folded(images)
    assert expected.abs().max() > 1.0  # the statistics matter: not a trivially small output
    assert (got - expected).abs().max().item() < 1e-10


def _mobilenet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    features = _nontrivial_statistics(mobilenet_v2().features)
    return {k: v.clone() for k, v in features.state_dict().items()}


def test_mobilenet_loads_torchvision_keys_and_folds_to_the_same_function() -> None:
    bare = _mobilenet_state()
    prefixed = {f"features.{k}": v for k, v in bare.items()}
    prefixed["classifier.1.weight"] = torch.zeros(1000, 1280)  # the head is ignored
    reference = mobilenet_v2().features.eval()
    reference.load_state_dict(bare)
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = reference(ImageNetInput()(images))
        for state in (bare, prefixed):
            net = MobileNetV2Features(state).eval()
            assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
            assert torch.allclose(net(images), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("drop", "missing key '3.conv.1.0.weight'"),
        ("extra", "unexpected key '19.0.weight'"),
        ("shape", "key '0.0.weight' has shape (32, 1, 3, 3), MobileNetV2"),
    ],
)
def test_a_misfitting_file_is_refused_with_one_line_naming_the_key(
    change: str, needle: str, tmp_path: Path
) -> None:
    state = {k: v.contiguous() for k, v in _mobilenet_state().items()}
    if change == "drop":
        del state["3.conv.1.0.weight"]
    elif change == "extra":
        state["19.0.weight"] = torch.zeros(3)
    else:
        state["0.0.weight"] = torch.zeros(32, 1, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    method = MethodConfig(backbone="mobilenet_v2", init_weights=path)
    with pytest.raises(ModelError) as caught:
        build_feature_backbone(method, 32)
    message = str(caught.value.message)
    assert "\n" not in message and "bad.safetensors" in message
    assert needle in message


def _densenet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    network = densenet121()
    _nontrivial_statistics(network.features)
    return {k: v.clone() for k, v in network.state_dict().items()}


def test_densenet_accepts_torchvision_legacy_and_chexnet_key_layouts() -> None:
    state = _densenet_state()
    legacy = {
        "module.densenet121." + re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", k): v
        for k, v in state.items()
    }
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in legacy
    images = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        outputs = [DenseNet121Features(s).eval()(images) for s in (state, legacy)]
        reference = densenet121().features.eval()
        reference.load_state_dict({k[9:]: v for k, v in state.items() if k[:9] == "features."})
        expected = torch.relu(reference(ImageNetInput()(images)))
    assert torch.equal(outputs[0], outputs[1])
    assert torch.allclose(outputs[0], expected, atol=1e-3, rtol=1e-4)


def test_densenet_takes_a_torchxrayvision_file_with_a_one_channel_stem() -> None:
    torch.manual_seed(0)
    xrv = densenet121(num_classes=18)
    xrv.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    _nontrivial_statistics(xrv.features)
    state = dict(xrv.state_dict())
    state["op_threshs"] = torch.rand(18)  # TorchXRayVision's thresholds buffer: ignored
    assert "features.denseblock1.denselayer1.norm1.weight" in state
    network = DenseNet121Features(state).eval()
    # xrv sees x in [0, 1] as 2048 x - 1024; clinfl feeds z = (x - 0.5) / 0.25
    z = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        features = network.features
        got = features.conv0(network.input(z))  # norm0 is folded into conv0
        expected = xrv.features.norm0(xrv.features.conv0(XRV_SCALE * (z * 0.25 + 0.5) - 1024))
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # beyond conv0's padding
    assert expected.abs().max() > 100
    assert torch.allclose(got[interior], expected[interior], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(
    ("backbone", "stride"),
    [("mobilenet_v2", 32), ("mobilenet_v2", 16), ("densenet121", 32), ("densenet121", 16)],
)
def test_feature_width_and_blocks_match_the_config_table(backbone: str, stride: int) -> None:
    method = MethodConfig(backbone=backbone, pretrained=False, feature_stride=stride)  # type: ignore[arg-type]
    net = build_feature_backbone(method, 64)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 64, 64))
    assert out.shape[1] == net.out_dim == feature_width(backbone, 64, stride)
    assert out.shape[2] == 64 // stride
    assert len(net.blocks()) == block_count(backbone, stride)
    owned = {id(p) for block in net.blocks() for p in block.parameters()}
    assert owned == {id(p) for p in net.parameters()}  # the blocks hold every weight
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_mobilenet_defaults_to_the_measured_stride_16_map() -> None:
    net = build_feature_backbone(MethodConfig(backbone="mobilenet_v2", pretrained=False), 64)
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 96, 4, 4)  # 16 tokens at 64 px


def test_mobilenet_without_cached_weights_names_the_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(ModelError) as caught:
        create_algorithm(MethodConfig(backbone="mobilenet_v2")).build_model(SPEC)
    assert "clinfl weights fetch mobilenet_v2-imagenet" in caught.value.remedy
    model = create_algorithm(MethodConfig(backbone="mobilenet_v2", pretrained=False))
    assert model.build_model(SPEC) is not None  # random weights need no cache


def test_mobilenet_loads_the_cached_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {k: v.contiguous() for k, v in _mobilenet_state(seed=5).items()}
    save_file(state, str(tmp_path / "mobilenet_v2-imagenet.safetensors"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cached = build_feature_backbone(MethodConfig(backbone="mobilenet_v2"), 32)
    given = MobileNetV2Features(state)
    assert torch.equal(cached.features[0][0].weight, given.features[0][0].weight)


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_train_blocks_freezes_the_leading_blocks_and_keeps_them_home() -> None:
    method = MethodConfig(
        backbone="mobilenet_v2", pretrained=False, feature_stride=16, train_blocks=2
    )
    algorithm = create_algorithm(method)
    model = algorithm.build_model(SPEC)
    trainable = _trainable(model)
    assert {n.split(".")[2] for n in trainable if n.startswith("backbone.")} == {"12", "13"}
    assert any(n.startswith("ladm.") for n in trainable)  # the head always trains
    assert set(algorithm.travelling_state(model)) == trainable
    everything = create_algorithm(MethodConfig(backbone="mobilenet_v2", pretrained=False))
    full = everything.build_model(SPEC)
    assert all(p.requires_grad for p in full.parameters())


@pytest.mark.parametrize(
    ("backbone", "blocks"), [("mobilenet_v2", 2), ("mobilenet_v2", 0), ("small", 1), ("small", 0)]
)
def test_a_dp_sgd_round_trains_only_the_last_blocks(
    tmp_path: Path, backbone: str, blocks: int
) -> None:
    import numpy as np

    from clinfl.config.policy import DPPolicy
    from clinfl.data.imageset import ImageSet
    from clinfl.federation.messages import RoundSettings
    from clinfl.privacy.settings import DPSettings
    from site_agent.ledger import SiteLedger
    from site_agent.private_training import private_trainer
    from site_agent.training import simulation_random_bytes

    pretrainable = backbone == "mobilenet_v2"
    method = MethodConfig(
        backbone=backbone,
        pretrained=False,
        feature_stride=16 if pretrainable else None,
        train_blocks=blocks,
    )
    algorithm = create_algorithm(method)
    rng = np.random.default_rng(0)
    data = ImageSet(
        images=rng.integers(0, 256, (16, 32, 32), dtype=np.uint8),
        targets=(rng.random((16, 4)) < 0.4).astype(np.uint8),
        groups=np.arange(16, dtype=np.int64),
        class_names=("a", "b", "c", "d"),
    )
    site = private_trainer(
        "site-1",
        data,
        algorithm,
        SPEC,
        dp=DPSettings.from_policy(DPPolicy(epsilon_budget=50.0), grad_sample_mode="hooks"),
        ledger=SiteLedger(tmp_path),
        run_id="run-a",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
        random_bytes=simulation_random_bytes(1),
    )
    reference = algorithm.build_model(SPEC)
    state = algorithm.travelling_state(reference)
    frozen = {
        n: p.detach().clone() for n, p in site.model.named_parameters() if not p.requires_grad
    }
    update = site.train_round(state, RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3))

    assert set(update.delta) == set(state) == _trainable(reference)
    travelling_backbone = {n for n in update.delta if n.startswith("backbone.")}
    assert bool(travelling_backbone) == (blocks > 0)  # 0: the head alone trains and travels
    assert update.steps >= 1 and site.epsilon() is not None
    assert any(float(d.abs().max()) > 0 for d in update.delta.values())
    after = dict(site.model.named_parameters())
    assert frozen and all(torch.equal(after[n], value) for n, value in frozen.items())


def test_config_validation_of_the_backbone_fields(tmp_path: Path) -> None:
    bad = RunConfig(
        method=MethodConfig(backbone="small", feature_stride=16, train_blocks=0),
    )
    with pytest.raises(ValidationError) as caught:
        validate_run_config(bad, known_methods=("fedncalign",))
    assert "feature_stride" in str(caught.value)
    too_many = RunConfig(method=MethodConfig(backbone="mobilenet_v2", train_blocks=15))
    with pytest.raises(ValidationError, match=r"train_blocks.*0\.\.14"):  # stride 16 by default
        validate_run_config(too_many, known_methods=("fedncalign",))
    whole = MethodConfig(backbone="mobilenet_v2", feature_stride=32, train_blocks=19)
    validate_run_config(RunConfig(method=whole), known_methods=("fedncalign",))


def test_expanded_weights_dp_mode_is_refused_for_the_pretrained_backbones() -> None:
    from clinfl.config import PrivacyConfig

    config = RunConfig(
        method=MethodConfig(backbone="mobilenet_v2"), privacy=PrivacyConfig(grad_sample_mode="ew")
    )
    with pytest.raises(ValidationError, match="not ew with backbone mobilenet_v2"):
        validate_run_config(config, known_methods=("fedncalign",))


def test_a_config_file_still_using_weights_is_told_of_the_rename(tmp_path: Path) -> None:
    document = {"method": {"name": "fedavg", "weights": "w.pt"}}
    with pytest.raises(ValidationError, match="renamed to init_weights"):
        run_config_from_mapping(document, base=tmp_path)
