"""Label-Aware Disentanglement Module (LADM): class queries attend over the feature map.

Multi-head cross-attention built from four ``nn.Linear`` layers and
``F.scaled_dot_product_attention`` (not ``nn.MultiheadAttention``, whose Opacus replacement gives
wrong outputs with several queries). Queries are the C class prototypes, expanded per sample so
every ``Linear`` sees a batch dimension (Opacus computes per-sample gradients from it).

``query_scaling="layernorm"`` is a clinfl extension, not the paper's module: a LayerNorm on the
queries and one on the tokens before their projections. The paper's queries are unit-norm ETF
rows while the backbone's tokens have norms of 10 to 20, so the attention scores start near zero
and the softmax stays close to uniform: every class then attends to the same average token and
the C class features of one image are the same vector. Normalising both sides puts them on one
scale, so that the attention can differ between classes (docs/method.md has the measurements).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clinfl.errors import ModelError

QueryScaling = Literal["none", "layernorm"]
QUERY_SCALINGS: tuple[str, ...] = ("none", "layernorm")


class LabelAttention(nn.Module):
    """``(queries [C, d], feature map [B, d, h, w]) -> class features [B, C, d]``.

    ``inner`` is the attention's own width (d by default, as in the paper; smaller for the CPU
    presets): queries, keys and values are projected to it and the output back to d.

    Raises:
        ModelError: if ``heads`` does not divide the attention width.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        inner: int | None = None,
        query_scaling: QueryScaling = "none",
    ) -> None:
        super().__init__()
        inner = dim if inner is None else inner
        if inner % heads:
            raise ModelError(
                f"attention width {inner} is not divisible by {heads} heads",
                remedy="use a number of heads that divides the attention width (the paper uses 4)",
            )
        self.dim = dim
        self.inner = inner
        self.heads = heads
        self.q_norm = nn.LayerNorm(dim) if query_scaling == "layernorm" else None
        self.k_norm = nn.LayerNorm(dim) if query_scaling == "layernorm" else None
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.inner // self.heads).transpose(1, 2)

    def _queries_and_keys(
        self, queries: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_sample_queries = queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # [B, C, d]
        keys_in = tokens
        if self.q_norm is not None and self.k_norm is not None:
            per_sample_queries = self.q_norm(per_sample_queries)
            keys_in = self.k_norm(tokens)
        return self._split(self.q_proj(per_sample_queries)), self._split(self.k_proj(keys_in))

    def attention_weights(self, queries: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """Return each class's attention over the feature map's positions: ``[B, H, C, h*w]``.

        The softmax weights that :meth:`forward` applies (each row sums to one over positions);
        for explanations, not training.
        """
        tokens = feature_map.flatten(2).transpose(1, 2)
        q, k = self._queries_and_keys(queries, tokens)
        scores = q @ k.transpose(-2, -1) / (self.inner // self.heads) ** 0.5
        return torch.softmax(scores, dim=-1)

    def forward(self, queries: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """Return one feature per class for every image in the batch."""
        batch = feature_map.shape[0]
        tokens = feature_map.flatten(2).transpose(1, 2)  # [B, h*w, d]
        q, k = self._queries_and_keys(queries, tokens)
        v = self._split(self.v_proj(tokens))
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, H, C, inner/H]
        # the class count, not -1: an empty (Poisson-sampled) batch has nothing to infer it from
        merged = attended.transpose(1, 2).reshape(batch, attended.shape[2], self.inner)
        out: torch.Tensor = self.out_proj(merged)
        return out
