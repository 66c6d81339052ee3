"""The two network shapes clinfl trains: FedNCAlign-ML's ETF network and a linear-head baseline."""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn

from clinfl.errors import ModelError
from clinfl.model.backbones.base import FeatureBackbone
from clinfl.model.etf import SimplexETF
from clinfl.model.ladm import LabelAttention, QueryScaling

HeadBias = Literal["prior", "zero"]
HEAD_BIASES: tuple[str, ...] = ("prior", "zero")


def prior_logit(num_classes: int) -> float:
    """Return ``log(1 / (C - 1))``, the logit of a 1/C prior: where every class bias starts.

    FedNCAlign-ML's classifier and (by default) every linear-head baseline start here, so a
    comparison of the methods does not hinge on which head starts better calibrated.
    """
    return -math.log(num_classes - 1)


class NetOutput(NamedTuple):
    """What a forward pass returns.

    ``logits`` is ``[B, C]``. For the ETF network, ``class_features`` is ``[B, C, d]``,
    ``prototypes`` the ``[C, d]`` classifier rows the logits were computed with and ``bias`` the
    classifier's bias for each sample, ``[B, C]`` (None without one); the linear-head network
    leaves all three None.
    """

    logits: torch.Tensor
    class_features: torch.Tensor | None = None
    prototypes: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class LearnableRows(nn.Module):
    """A trainable ``[C, d]`` matrix: learnable queries or classifier (for ablations)."""

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(initial.clone())

    def forward(self) -> torch.Tensor:
        """Return the matrix."""
        return self.weight


class ClassBias(nn.Module):
    """The ETF classifier's trainable per-class bias ``b`` (``[C]``), returned per sample.

    It starts at ``log(1 / (C - 1))``, the logit of a 1/C prior, so that every class starts out
    predicted rare (multi-label targets are mostly negative) and the rejection hinge
    ``sigmoid(max_j logit_j) < tau`` is reachable from the start: without a bias it never is,
    because the simplex ETF's prototypes sum to zero, so ``max_j <f, w_j> >= 0`` for every ``f``.

    The bias is the weight of an ``nn.Linear(1, C)`` applied to a column of ones, so the forward
    pass returns ``[B, C]``: every per-sample-gradient engine of Opacus (hooks, functorch,
    expanded weights, ghost clipping) then sees an ordinary linear layer with a batch dimension.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, num_classes, bias=False)
        with torch.no_grad():
            self.linear.weight.fill_(prior_logit(num_classes))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Return the bias for each of ``batch``'s samples: ``[B, C]``."""
        ones = batch.new_ones(batch.shape[0], 1)
        out: torch.Tensor = self.linear(ones)
        return out


class FedNCAlignNet(nn.Module):
    """Backbone -> LADM (ETF queries) -> ETF classifier: ``logit_k = <f_k, w_k> + b_k``.

    The prototypes ``w`` are fixed; the per-class bias ``b`` is trainable (as in the published
    research code, whose classifier is an ``nn.Linear`` with a frozen ETF weight and a trainable
    bias). ``classifier_bias=False`` gives the bias-free ``<f_k, w_k>`` of METHOD.md's formula.

    Ablations: ``ladm=False`` uses the pooled feature for every class; ``learnable_queries`` and
    ``learnable_classifier`` replace the fixed ETF by trainable matrices (initialised from the ETF
    for queries, randomly for the classifier). ``ladm_width`` is LADM's attention width (the
    feature width by default) and ``query_scaling`` its clinfl extension (see
    :class:`~clinfl.model.ladm.LabelAttention`).
    """

    def __init__(
        self,
        backbone: FeatureBackbone,
        etf: SimplexETF,
        *,
        ladm: bool = True,
        heads: int = 4,
        ladm_width: int | None = None,
        query_scaling: QueryScaling = "none",
        learnable_queries: bool = False,
        learnable_classifier: bool = False,
        classifier_bias: bool = True,
        init_generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.etf = etf
        dim, classes = etf.dim, etf.num_classes
        self.ladm = (
            LabelAttention(dim, heads=heads, inner=ladm_width, query_scaling=query_scaling)
            if ladm
            else None
        )
        self.queries = LearnableRows(etf.prototypes) if (ladm and learnable_queries) else None
        self.classifier: LearnableRows | None = None
        if learnable_classifier:
            initial = torch.randn(classes, dim, generator=init_generator) / dim**0.5
            self.classifier = LearnableRows(initial)
        self.bias = ClassBias(classes) if classifier_bias else None

    def forward(self, images: torch.Tensor) -> NetOutput:
        """Return logits, class features and the prototypes used."""
        return self.head(self.backbone(images))

    def head(self, feature_map: torch.Tensor) -> NetOutput:
        """Return what :meth:`forward` returns, from the backbone's feature map of the images."""
        etf = self.etf()
        prototypes = etf if self.classifier is None else self.classifier()
        if self.ladm is None:
            pooled = feature_map.mean(dim=(2, 3))
            features = pooled.unsqueeze(1).expand(-1, etf.shape[0], -1)
        else:
            queries = etf if self.queries is None else self.queries()
            features = self.ladm(queries, feature_map)
        logits = (features * prototypes.unsqueeze(0)).sum(dim=2)
        bias = None if self.bias is None else self.bias(feature_map)
        if bias is not None:
            logits = logits + bias
        return NetOutput(logits, features, prototypes, bias)

    def class_attention(self, images: torch.Tensor) -> torch.Tensor:
        """Return LADM's attention of each class over the feature map: ``[B, C, h, w]``.

        The map is the mean over heads of the softmax weights, so each class's map sums to one
        over positions.

        Raises:
            ModelError: if the network was built without LADM (``--no-ladm``).
        """
        if self.ladm is None:
            raise ModelError(
                "this model was trained without LADM (--no-ladm), so it has no class attention",
                remedy="leave out --explain",
            )
        feature_map = self.backbone(images)
        queries = self.etf() if self.queries is None else self.queries()
        weights = self.ladm.attention_weights(queries, feature_map).mean(dim=1)
        return weights.reshape(*weights.shape[:2], *feature_map.shape[2:])


class LinearHeadNet(nn.Module):
    """Backbone -> global average pool -> learnable linear head (the FedAvg/FedProx baseline).

    ``head_bias="prior"`` (the default) starts the head's bias at :func:`prior_logit`, as
    FedNCAlign-ML's classifier bias starts; ``"zero"`` starts it at 0 (a logit of 0.5 for every
    class, the head the first benchmark runs compared against).
    """

    def __init__(
        self, backbone: FeatureBackbone, num_classes: int, *, head_bias: HeadBias = "prior"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_dim, num_classes)
        with torch.no_grad():
            self.fc.bias.fill_(prior_logit(num_classes) if head_bias == "prior" else 0.0)

    def forward(self, images: torch.Tensor) -> NetOutput:
        """Return logits only."""
        pooled = self.backbone(images).mean(dim=(2, 3))
        return NetOutput(self.fc(pooled))
