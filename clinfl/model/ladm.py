"""Label-Aware Disentanglement Module (LADM): class queries attend over the feature map.

Multi-head cross-attention built from four ``nn.Linear`` layers and
``F.scaled_dot_product_attention`` (not ``nn.MultiheadAttention``, whose Opacus replacement gives
wrong outputs with several queries). Queries are the C class prototypes, expanded per sample so
every ``Linear`` sees a batch dimension (Opacus computes per-sample gradients from it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clinfl.errors import ModelError


class LabelAttention(nn.Module):
    """``(queries [C, d], feature map [B, d, h, w]) -> class features [B, C, d]``."""

    def __init__(self, dim: int, *, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ModelError(
                f"feature width {dim} is not divisible by {heads} heads",
                remedy="use a number of heads that divides the feature width (the paper uses 4)",
            )
        self.dim = dim
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.dim // self.heads).transpose(1, 2)

    def attention_weights(self, queries: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """Return each class's attention over the feature map's positions: ``[B, H, C, h*w]``.

        The softmax weights that :meth:`forward` applies (each row sums to one over positions);
        for explanations, not training.
        """
        batch = feature_map.shape[0]
        tokens = feature_map.flatten(2).transpose(1, 2)
        q = self._split(self.q_proj(queries.unsqueeze(0).expand(batch, -1, -1)))
        k = self._split(self.k_proj(tokens))
        scores = q @ k.transpose(-2, -1) / (self.dim // self.heads) ** 0.5
        return torch.softmax(scores, dim=-1)

    def forward(self, queries: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """Return one feature per class for every image in the batch."""
        batch = feature_map.shape[0]
        tokens = feature_map.flatten(2).transpose(1, 2)  # [B, h*w, d]
        per_sample_queries = queries.unsqueeze(0).expand(batch, -1, -1)  # [B, C, d]
        q = self._split(self.q_proj(per_sample_queries))
        k = self._split(self.k_proj(tokens))
        v = self._split(self.v_proj(tokens))
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, H, C, d/H]
        merged = attended.transpose(1, 2).reshape(batch, -1, self.dim)
        out: torch.Tensor = self.out_proj(merged)
        return out
