"""FedNCAlign-ML: fixed simplex-ETF classifier, LADM, rejection and contrastive losses."""

from __future__ import annotations

import torch
from torch import nn

from clinfl.algorithms.base import Algorithm, ModelSpec, build_backbone
from clinfl.algorithms.registry import register_algorithm
from clinfl.config.presets import or_library_default
from clinfl.errors import InternalError
from clinfl.model.etf import SimplexETF
from clinfl.model.losses import fedncalign_loss
from clinfl.model.networks import FedNCAlignNet, NetOutput

# METHOD.md section 3: the paper's lambda_rej is 1 on clean backgrounds and 0.01 on complex ones
# (X-rays). A run's default is its data set's preset (clinfl.config.presets).
CLEAN_BACKGROUND_LAMBDA_REJ = 1.0
COMPLEX_BACKGROUND_LAMBDA_REJ = 0.01


@register_algorithm
class FedNCAlign(Algorithm):
    """The paper's method; its ablation switches live on :class:`~clinfl.config.MethodConfig`."""

    name = "fedncalign"
    summary = "FedNCAlign-ML: fixed simplex-ETF classifier + LADM + L_rej + L_con"

    def build_model(self, spec: ModelSpec) -> nn.Module:
        """Build the network; the ETF is derived from ``spec.federation_seed`` at every site."""
        generator = torch.Generator().manual_seed(spec.init_seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            backbone = build_backbone(self.method, spec)
            etf = SimplexETF(spec.num_classes, backbone.out_dim, seed=spec.federation_seed)
            return FedNCAlignNet(
                backbone,
                etf,
                ladm=self.method.ladm,
                heads=self.method.heads,
                ladm_width=self.method.ladm_width,
                query_scaling=self.method.query_scaling,
                learnable_queries=self.method.queries == "learnable",
                learnable_classifier=self.method.classifier == "learnable",
                classifier_bias=self.method.classifier_bias,
                init_generator=generator,
            )

    @property
    def lambda_rej(self) -> float:
        """The rejection weight (the library preset's when not set: outside a run)."""
        return or_library_default(self.method.lambda_rej, "method.lambda_rej")

    def per_sample_loss(self, output: NetOutput, targets: torch.Tensor) -> torch.Tensor:
        """Return BCE + lambda_rej * L_rej + lambda_con * L_con for each sample."""
        if output.class_features is None or output.prototypes is None:
            raise InternalError("the ETF network returned no class features or prototypes")
        terms = fedncalign_loss(
            output.logits,
            output.class_features,
            output.prototypes,
            targets,
            lambda_rej=self.lambda_rej,
            lambda_con=or_library_default(self.method.lambda_con, "method.lambda_con"),
            tau=self.method.tau_rej,
            temperature=self.method.temperature,
            bias=output.bias,
        )
        return terms.total
