"""Right-sized backbones, LADM width and query scaling, fair head biases, LADM diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.config import MethodConfig, RunConfig, validate_run_config
from clinfl.errors import ModelError, ValidationError
from clinfl.model.backbones.resnet import ResNet18Features
from clinfl.model.diagnostics import ladm_diagnostics, mean_pairwise_cosine
from clinfl.model.ladm import LabelAttention
from clinfl.model.networks import FedNCAlignNet, LinearHeadNet, prior_logit

SPEC = ModelSpec(num_classes=6, image_size=32, federation_seed=7, init_seed=0)


@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_backbone_width_scales_every_stage(width: int) -> None:
    backbone = ResNet18Features(stem="small", width=width)
    out = backbone(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 8 * width, 4, 4)
    assert backbone.out_dim == 8 * width
    assert backbone.layer1[0].conv1.out_channels == width
    assert backbone.layer4[1].conv2.out_channels == 8 * width


def test_full_width_backbone_is_torchvision_resnet18_by_parameter_count() -> None:
    backbone = ResNet18Features(stem="standard")
    # torchvision's ResNet-18 has 11,689,512 parameters, 513,000 of them in its fc head
    assert sum(p.numel() for p in backbone.parameters()) == 11_689_512 - 513_000


def test_unsupported_width_is_refused_with_a_remedy() -> None:
    with pytest.raises(ModelError, match="width 48"):
        ResNet18Features(stem="small", width=48)


def test_config_rejects_bad_width_scaling_and_bias_at_once() -> None:
    config = RunConfig(
        method=MethodConfig(width=24, query_scaling="rms", head_bias="half")  # type: ignore[arg-type]
    )
    with pytest.raises(ValidationError) as caught:
        validate_run_config(config, known_methods=("fedavg", "fedncalign"))
    message = str(caught.value)
    assert "width" in message and "query_scaling" in message and "head_bias" in message


@pytest.mark.parametrize("name", ["fedncalign", "spherefed", "fedavg"])
def test_narrow_models_use_the_narrow_feature_width(name: str) -> None:
    model = create_algorithm(MethodConfig(name=name, width=16)).build_model(SPEC)
    output = model(torch.randn(3, 1, 32, 32))
    assert output.logits.shape == (3, 6)
    if isinstance(model, FedNCAlignNet):
        assert model.etf.prototypes.shape == (6, 128)
        assert output.class_features is not None and output.class_features.shape == (3, 6, 128)


def test_ladm_inner_width_projects_back_to_the_feature_width() -> None:
    attention = LabelAttention(64, heads=4, inner=16)
    features = attention(torch.randn(6, 64), torch.randn(2, 64, 3, 3))
    assert features.shape == (2, 6, 64)
    assert attention.q_proj.out_features == 16 and attention.out_proj.in_features == 16
    with pytest.raises(ModelError, match="not divisible"):
        LabelAttention(64, heads=4, inner=10)


def test_layernorm_scaling_makes_attention_scale_free() -> None:
    """With LayerNorm on both sides, scaling the tokens or the queries changes no weight."""
    torch.manual_seed(0)
    scaled = LabelAttention(32, heads=4, query_scaling="layernorm")
    plain = LabelAttention(32, heads=4)
    plain.load_state_dict(
        {k: v for k, v in scaled.state_dict().items() if "norm" not in k}, strict=True
    )
    queries, tokens = torch.randn(5, 32), torch.randn(2, 32, 4, 4)
    base = scaled.attention_weights(queries, tokens)
    assert torch.allclose(base, scaled.attention_weights(queries * 7.0, tokens * 20.0), atol=1e-5)
    assert not torch.allclose(
        plain.attention_weights(queries, tokens),
        plain.attention_weights(queries, tokens * 20.0),
        atol=1e-3,
    )


def test_linear_heads_start_at_the_same_prior_as_the_etf_classifier_bias() -> None:
    fedavg = create_algorithm(MethodConfig(name="fedavg")).build_model(SPEC)
    ncalign = create_algorithm(MethodConfig(name="fedncalign")).build_model(SPEC)
    assert isinstance(fedavg, LinearHeadNet) and isinstance(ncalign, FedNCAlignNet)
    assert ncalign.bias is not None
    expected = torch.full((6,), prior_logit(6))
    assert torch.allclose(fedavg.fc.bias, expected)
    assert torch.allclose(ncalign.bias.linear.weight.squeeze(1), expected)
    assert math.isclose(1 / (1 + math.exp(-prior_logit(6))), 1 / 6, rel_tol=1e-9)
    zero = create_algorithm(MethodConfig(name="fedavg", head_bias="zero")).build_model(SPEC)
    assert isinstance(zero, LinearHeadNet)
    assert torch.count_nonzero(zero.fc.bias) == 0


def test_every_linear_head_baseline_gets_the_prior_bias() -> None:
    for name in ("fedprox", "scaffold", "fedcurv"):
        model = create_algorithm(MethodConfig(name=name)).build_model(SPEC)
        assert isinstance(model, LinearHeadNet)
        assert torch.allclose(model.fc.bias, torch.full((6,), prior_logit(6)))


def test_mean_pairwise_cosine_known_answers() -> None:
    same = torch.ones(2, 4, 8)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    orthogonal = torch.eye(4).unsqueeze(0)
    assert mean_pairwise_cosine(orthogonal) == pytest.approx(0.0)
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert mean_pairwise_cosine(opposite) == pytest.approx(-1.0)


def test_ladm_diagnostics_measure_uniform_attention_and_identical_features() -> None:
    model = create_algorithm(MethodConfig(name="fedncalign", width=16)).build_model(SPEC)
    assert isinstance(model, FedNCAlignNet) and model.ladm is not None
    with torch.no_grad():  # zero query projection: every score 0, attention exactly uniform
        model.ladm.q_proj.weight.zero_()
        model.ladm.q_proj.bias.zero_()
    diagnostics = ladm_diagnostics(model, torch.randn(4, 1, 32, 32))
    assert diagnostics is not None
    assert diagnostics.uniform_entropy == pytest.approx(math.log(16))
    assert diagnostics.attention_entropy == pytest.approx(math.log(16), abs=1e-6)
    assert diagnostics.class_feature_cosine == pytest.approx(1.0, abs=1e-6)
    assert model.training  # measuring leaves the mode as it found it


def test_ladm_diagnostics_are_none_without_ladm() -> None:
    for method in (MethodConfig(name="fedavg"), MethodConfig(name="fedncalign", ladm=False)):
        model = create_algorithm(method).build_model(SPEC)
        assert ladm_diagnostics(model, torch.randn(2, 1, 32, 32)) is None


def test_rejection_diagnostics_count_negative_pairs_that_look_like_a_class() -> None:
    model = create_algorithm(MethodConfig(name="fedncalign", width=16)).build_model(SPEC)
    assert isinstance(model, FedNCAlignNet) and model.bias is not None
    images = torch.randn(4, 1, 32, 32)
    targets = torch.zeros(4, 6)
    targets[:, 0] = 1
    with torch.no_grad():  # a huge bias on class 2: every class feature looks like class 2
        model.bias.linear.weight[2] = 50.0
    high = ladm_diagnostics(model, images, targets, tau=0.3)
    with torch.no_grad():  # a hugely negative bias everywhere: nothing looks like a class
        model.bias.linear.weight.fill_(-50.0)
    low = ladm_diagnostics(model, images, targets, tau=0.3)
    assert high is not None and low is not None
    assert high.rejection_active == pytest.approx(1.0)
    assert low.rejection_active == pytest.approx(0.0)
    assert low.positive_probability == pytest.approx(0.0, abs=1e-12)
    assert "rejection_active" in low.to_json_dict()
    assert ladm_diagnostics(model, images) is not None
    assert "rejection_active" not in ladm_diagnostics(model, images).to_json_dict()  # type: ignore[union-attr]


def test_rejection_diagnostics_work_with_a_learnable_classifier() -> None:
    """The no-ETF ablation's prototypes require grad; measuring must not trip autograd."""
    method = MethodConfig(name="fedncalign", width=16, classifier="learnable")
    model = create_algorithm(method).build_model(SPEC)
    targets = torch.zeros(4, 6)
    targets[:, 1] = 1
    diagnostics = ladm_diagnostics(model, torch.randn(4, 1, 32, 32), targets)
    assert diagnostics is not None and diagnostics.rejection_active is not None
    assert 0.0 <= diagnostics.rejection_active <= 1.0
