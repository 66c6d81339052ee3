"""Turning a site's update into the integer vector it masks, and the unmasked sum back into a mean.

A site with ``n_i`` samples and update ``delta_i`` sends ``w_i * q(delta_i)`` followed by ``w_i``,
where ``w_i = min(n_i, weight_cap)`` and ``q`` is stochastic fixed-point quantisation onto
``[0, 2 c s]``. The sample count therefore travels only inside the masked vector. After unmasking,
``S = sum_i w_i q(delta_i)`` and ``W = sum_i w_i``, so the weighted mean is ``S / (s W) - c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clinfl.secagg.hazmat.prg import residue_dtype
from clinfl.secagg.hazmat.quantize import quantize
from clinfl.secagg.settings import RoundParameters


@dataclass(frozen=True)
class DecodedSum:
    """The weighted mean update and the total weight the survivors contributed."""

    mean: np.ndarray
    total_weight: int


def encode_update(
    update: np.ndarray, *, num_samples: int, params: RoundParameters, rng: np.random.Generator
) -> np.ndarray:
    """Return the residue vector (length ``vector_length + 1``) a site masks and sends.

    Raises:
        ValueError: for a vector of the wrong length or a non-positive sample count.
    """
    if update.shape != (params.vector_length,):
        raise ValueError(
            f"update has shape {update.shape}, the round expects ({params.vector_length},)"
        )
    if num_samples < 1:
        raise ValueError(f"a site needs at least one sample to contribute, got {num_samples}")
    weight = min(num_samples, params.weight_cap)
    quantised = quantize(update, clip=params.clip, scale=params.scale, bits=params.bits, rng=rng)
    dtype = residue_dtype(params.bits)
    encoded = np.empty(params.vector_length + 1, dtype=dtype)
    np.multiply(quantised, dtype.type(weight), out=encoded[:-1])
    encoded[-1] = weight
    return encoded


def decode_sum(total: np.ndarray, *, params: RoundParameters) -> DecodedSum:
    """Turn the unmasked sum into the weighted mean update.

    Raises:
        ValueError: if the sum is the wrong length or carries no weight.
    """
    if total.shape != (params.vector_length + 1,):
        raise ValueError(f"sum has shape {total.shape}, expected ({params.vector_length + 1},)")
    weight = int(total[-1])
    if weight < 1:
        raise ValueError("the unmasked sum carries no sample weight")
    mean = total[:-1].astype(np.float64) / (params.scale * weight) - params.clip
    return DecodedSum(mean=mean, total_weight=weight)
