"""Turning a site's update into the integer vector it masks, and the unmasked sum back into means.

A site with ``n_i`` samples and update ``delta_i`` sends ``w_i * q(delta_i)`` followed by three
metadata slots: ``w_i``, a flag ``r_i`` (1 when its policy lets it report its training loss) and
``r_i * q_l(loss_i)``. ``w_i = min(n_i, weight_cap)`` (or 1 when the policy keeps sample counts at
the site), ``q`` is stochastic fixed-point quantisation onto ``[0, 2 c s]`` and ``q_l`` the same
onto ``[0, LOSS_CLIP * s_l]``. Sample counts and losses therefore travel only inside the masked
vector (SECAGG.md, "Version 2", R7). After unmasking, ``S = sum_i w_i q(delta_i)`` and ``W = sum_i
w_i``, so the weighted mean is ``S / (s W) - c``; the mean reported loss is ``sum_i r_i q_l(loss_i)
/ (s_l sum_i r_i)``.

An evaluation session (``params.purpose == "evaluation"``) sums integer counts instead
(:func:`encode_counts`, :func:`decode_counts`): exact, with no quantisation, and one contributor
slot of 1 per site, so the coordinator learns how many sites the sum covers and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clinfl.secagg.hazmat.prg import residue_dtype
from clinfl.secagg.hazmat.quantize import quantize
from clinfl.secagg.settings import LOSS_CLIP, RoundParameters


@dataclass(frozen=True)
class DecodedSum:
    """The weighted mean update, the total weight, and the mean loss the sites reported."""

    mean: np.ndarray
    total_weight: int
    mean_loss: float | None = None
    loss_reporters: int = 0


def encode_update(
    update: np.ndarray,
    *,
    num_samples: int,
    params: RoundParameters,
    rng: np.random.Generator,
    loss: float | None = None,
) -> np.ndarray:
    """Return the residue vector (length ``params.masked_length``) a site masks and sends.

    ``loss`` is the site's mean training loss, or None when its policy keeps it at the site. A
    ``num_samples`` of 0 is a site whose training failed (R7'): it contributes zeros, weight 0.

    Raises:
        ValueError: for a vector of the wrong length or a negative sample count.
    """
    if update.shape != (params.vector_length,):
        raise ValueError(
            f"update has shape {update.shape}, the round expects ({params.vector_length},)"
        )
    if num_samples < 0:
        raise ValueError(f"a sample count cannot be negative, got {num_samples}")
    weight = min(num_samples, params.weight_cap)
    quantised = quantize(update, clip=params.clip, scale=params.scale, bits=params.bits, rng=rng)
    dtype = residue_dtype(params.bits)
    encoded = np.zeros(params.masked_length, dtype=dtype)
    n = params.vector_length
    np.multiply(quantised, dtype.type(weight), out=encoded[:n])
    encoded[n] = weight
    if loss is not None and math.isfinite(loss):
        clipped = np.array([min(max(loss, 0.0), LOSS_CLIP) - LOSS_CLIP / 2])
        q_loss = quantize(
            clipped, clip=LOSS_CLIP / 2, scale=params.loss_scale, bits=params.bits, rng=rng
        )
        encoded[n + 1] = 1
        encoded[n + 2] = q_loss[0]
    return encoded


def decode_sum(total: np.ndarray, *, params: RoundParameters) -> DecodedSum:
    """Turn the unmasked sum into the weighted mean update and the mean reported loss.

    Raises:
        ValueError: if the sum is the wrong length or carries no weight.
    """
    if total.shape != (params.masked_length,):
        raise ValueError(f"sum has shape {total.shape}, expected ({params.masked_length},)")
    n = params.vector_length
    weight = int(total[n])
    if weight < 1:
        raise ValueError("the unmasked sum carries no sample weight")
    mean = total[:n].astype(np.float64) / (params.scale * weight) - params.clip
    reporters = int(total[n + 1])
    mean_loss = float(total[n + 2]) / (params.loss_scale * reporters) if reporters else None
    return DecodedSum(mean=mean, total_weight=weight, mean_loss=mean_loss, loss_reporters=reporters)


@dataclass(frozen=True)
class CountSum:
    """An unmasked sum of count vectors: the summed counts and how many sites contributed."""

    counts: np.ndarray  # int64, length params.vector_length
    contributors: int


def _count_limit(params: RoundParameters) -> int:
    """The largest magnitude one site's count may have so that no sum of the round can wrap."""
    return ((1 << (params.bits - 1)) - 1) // max(len(params.site_ids), 1)


def encode_counts(counts: np.ndarray, *, params: RoundParameters) -> np.ndarray:
    """Return the residue vector (length ``params.masked_length``) of integer ``counts``.

    An evaluation session sums integers exactly: no clipping, no quantisation. Each value
    travels in two's complement modulo ``2**bits`` (a noisy count may be negative), followed
    by one contributor slot holding 1, so the sum's last slot is the number of sites in it.
    A value is accepted only if ``len(site_ids)`` values of its size cannot wrap the signed
    range, so the sum of any survivor set decodes exactly.

    Raises:
        ValueError: if the session is not an evaluation one, the vector is not an integer
            vector of ``params.vector_length``, or a value could make the sum overflow.
    """
    if params.purpose != "evaluation":
        raise ValueError(f"counts travel only in evaluation sessions, not {params.purpose!r} ones")
    values = np.asarray(counts)
    if values.shape != (params.vector_length,) or values.dtype.kind not in "iu":
        raise ValueError(
            f"counts are {values.dtype} {values.shape}, the session expects "
            f"({params.vector_length},) integers"
        )
    values = values.astype(np.int64)
    limit = _count_limit(params)
    if values.size and int(np.abs(values).max()) > limit:
        raise ValueError(
            f"a count of magnitude {int(np.abs(values).max())} could overflow the sum of "
            f"{len(params.site_ids)} sites in {params.bits} bits (limit {limit}): use more bits"
        )
    dtype = residue_dtype(params.bits)
    encoded = np.zeros(params.masked_length, dtype=dtype)
    residues = values.astype(np.uint64)
    if params.bits < 64:
        residues &= np.uint64((1 << params.bits) - 1)
    encoded[: params.vector_length] = residues.astype(dtype)
    encoded[params.vector_length] = 1
    return encoded


def decode_counts(total: np.ndarray, *, params: RoundParameters) -> CountSum:
    """Turn the unmasked sum of :func:`encode_counts` vectors into signed counts and contributors.

    Raises:
        ValueError: if the sum is the wrong length, not an evaluation sum, or has no contributor.
    """
    if params.purpose != "evaluation":
        raise ValueError(f"a {params.purpose!r} sum holds no counts")
    if total.shape != (params.masked_length,):
        raise ValueError(f"sum has shape {total.shape}, expected ({params.masked_length},)")
    contributors = int(total[params.vector_length])
    if contributors < 1:
        raise ValueError("the unmasked sum has no contributor")
    values = np.asarray(total[: params.vector_length]).astype(np.uint64)
    if params.bits < 64:
        values &= np.uint64((1 << params.bits) - 1)
        high = values >= np.uint64(1 << (params.bits - 1))
        signed = values.astype(np.int64)
        signed[high] -= np.int64(1) << np.int64(params.bits)
    else:
        signed = values.view(np.int64).copy()
    return CountSum(signed, contributors)
