"""What a federated algorithm defines: its model, its local objective, and which tensors travel."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from clinfl.config import MethodConfig
from clinfl.model.backbones.base import FeatureBackbone
from clinfl.model.backbones.build import build_feature_backbone
from clinfl.model.networks import NetOutput
from clinfl.typing import StateDict

AUX_PREFIX = "aux/"
"""Global-state entries under this prefix are algorithm state (SCAFFOLD's control variate,
FedCurv's Fisher sums), not model tensors: they travel and are aggregated like the model."""

SiteMemory = MutableMapping[str, torch.Tensor]
"""What an algorithm keeps at one site between rounds (SCAFFOLD's c_i); it never travels."""

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def is_auxiliary(name: str) -> bool:
    """Whether a global-state entry is algorithm state rather than a model tensor."""
    return name.startswith(AUX_PREFIX)


def zeros_per_trainable(model: nn.Module, prefix: str) -> StateDict:
    """Return ``{prefix + name: zeros}`` for every trainable parameter of ``model``."""
    return {
        prefix + name: torch.zeros_like(param.detach())
        for name, param in model.named_parameters()
        if param.requires_grad
    }


@dataclass(frozen=True)
class RoundContext:
    """What :meth:`Algorithm.auxiliary_update` may use after a site's local training.

    ``batches`` iterates the site's own training data (images, targets); reading it is not
    covered by DP-SGD, so algorithms that do set :attr:`Algorithm.dp_incompatibility`.
    """

    steps: int
    lr: float
    batches: Batches


@dataclass(frozen=True)
class ModelSpec:
    """What every site needs to build the same model.

    ``load_initial_weights=False`` builds the network without reading its initial weights
    file, for a model whose every tensor is loaded afterwards (a model folder at predict time).
    """

    num_classes: int
    image_size: int
    federation_seed: int
    init_seed: int
    load_initial_weights: bool = True


def build_backbone(method: MethodConfig, spec: ModelSpec) -> FeatureBackbone:
    """Build the backbone the method config asks for (see :func:`build_feature_backbone`).

    Raises:
        ModelError: if its initial weights are missing or do not fit, or ``train_blocks`` or
            ``feature_stride`` does not fit it.
    """
    return build_feature_backbone(
        method, spec.image_size, load_initial_weights=spec.load_initial_weights
    )


class Algorithm(ABC):
    """A federated learning algorithm.

    Subclasses set ``name`` and ``summary`` and implement :meth:`build_model` and
    :meth:`per_sample_loss`. The default :meth:`travelling_state` sends every trainable tensor
    (plus BatchNorm running statistics when BatchNorm is used) and nothing else.

    Algorithms with state beyond the model (SCAFFOLD, FedCurv, SphereFed) add it to the
    initial global state (:meth:`initial_state`) and return its per-site change from
    :meth:`auxiliary_update`. The coordinator adds the sample-weighted mean of every entry's
    change, so all of it is aggregated as a sum under secure aggregation. Every entry must stay
    within the secure-aggregation clip (0.5 per coordinate by default) as a per-site change.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    dp_incompatibility: ClassVar[str | None] = None
    """Why DP-SGD cannot cover this algorithm's site computations (None: it can)."""

    def __init__(self, method: MethodConfig) -> None:
        self.method = method

    @abstractmethod
    def build_model(self, spec: ModelSpec) -> nn.Module:
        """Return a freshly initialised model (deterministic from ``spec.init_seed``)."""

    @abstractmethod
    def per_sample_loss(self, output: NetOutput, targets: torch.Tensor) -> torch.Tensor:
        """Return the data term of the local loss for each sample: ``[B]``."""

    def regulariser(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: Mapping[str, torch.Tensor],
    ) -> torch.Tensor | None:
        """Return a data-independent penalty added to the batch loss (None: no penalty).

        ``global_state`` is the round's global state (auxiliary entries included) and
        ``memory`` what the site kept from earlier rounds.
        """
        return None

    def after_step(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: SiteMemory,
    ) -> None:
        """Observe the model (and its gradients) after each local optimiser step."""
        return None

    def initial_state(self, model: nn.Module) -> StateDict:
        """Return the federation's initial global state.

        That is the travelling tensors plus any auxiliary entries (``aux/...``) the algorithm keeps.
        """
        return self.travelling_state(model)

    def auxiliary_update(
        self,
        model: nn.Module,
        global_state: Mapping[str, torch.Tensor],
        memory: SiteMemory,
        context: RoundContext,
    ) -> StateDict:
        """Return this site's change of the auxiliary entries after local training.

        Entries not returned change by zero. ``model`` holds the locally trained weights.
        """
        return {}

    def travelling_state(self, model: nn.Module) -> StateDict:
        """Return the tensors that make up an update: trainable parameters and norm statistics.

        Non-persistent buffers (the ETF) are never included.
        """
        state: StateDict = {
            name: param.detach() for name, param in model.named_parameters() if param.requires_grad
        }
        for name, buffer in model.state_dict().items():
            if name.endswith(("running_mean", "running_var")):
                state[name] = buffer.detach()
        return state

    def local_loss(
        self,
        model: nn.Module,
        images: torch.Tensor,
        targets: torch.Tensor,
        global_state: Mapping[str, torch.Tensor],
        memory: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Return the batch loss: the mean per-sample loss plus the regulariser."""
        output: NetOutput = model(images)
        loss = self.per_sample_loss(output, targets).mean()
        penalty = self.regulariser(model, global_state, memory or {})
        return loss if penalty is None else loss + penalty
