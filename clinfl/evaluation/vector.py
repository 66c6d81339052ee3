"""Score histograms as one flat int64 vector whose sum is the vector of the pooled histograms.

Layout (``C`` classes, ``B`` bins)::

    [1, FORMAT_VERSION, grid kind code, C, B, logit range in thousandths (0 if uniform)]
    positives[0, :], ..., positives[C-1, :]       (C * B counts)
    negatives[0, :], ..., negatives[C-1, :]       (C * B counts)
    loss_sum, loss_count

Every slot is linear, the header included: the sum of ``n`` sites' vectors carries ``n`` in slot
0 and ``n`` times each header field after it, which :func:`from_integer_vector` divides out and
checks. So the sum of vectors is the vector of the sums, and a secure-aggregation round can add
them as it adds updates (:func:`to_residues` / :func:`from_residues` map to and from its
residues modulo ``2**bits``, with negative values, such as noisy counts, in two's complement).
"""

from __future__ import annotations

import numpy as np

from clinfl.errors import EvaluationError
from clinfl.evaluation.grid import BinGrid
from clinfl.evaluation.histograms import ScoreHistograms

FORMAT_VERSION = 1
HEADER_SLOTS = 6
LOSS_SLOTS = 2


def vector_length(grid: BinGrid, num_classes: int) -> int:
    """Return the length of the integer vector of ``num_classes`` classes on ``grid``."""
    return HEADER_SLOTS + 2 * num_classes * grid.bins + LOSS_SLOTS


def _header(grid: BinGrid, num_classes: int) -> list[int]:
    logit_milli = 0 if grid.kind == "uniform" else grid.logit_range_milli
    return [1, FORMAT_VERSION, grid.code, num_classes, grid.bins, logit_milli]


def count_slots(grid: BinGrid, num_classes: int) -> slice:
    """Return the slice of the vector that holds the ``2 C B`` histogram counts."""
    return slice(HEADER_SLOTS, HEADER_SLOTS + 2 * num_classes * grid.bins)


def to_integer_vector(histograms: ScoreHistograms) -> np.ndarray:
    """Return one site's histograms as the int64 vector described in the module docstring.

    Raises:
        EvaluationError: if ``histograms`` is already a pool of several sites' (its header
            would not be one contributor's).
    """
    if histograms.contributors != 1:
        raise EvaluationError(
            f"only one site's histograms are encoded, these pool {histograms.contributors}",
            remedy="encode each site's histograms before they are summed",
        )
    return np.concatenate(
        [
            np.array(_header(histograms.grid, histograms.num_classes), dtype=np.int64),
            histograms.positives.ravel(),
            histograms.negatives.ravel(),
            np.array([histograms.loss_sum, histograms.loss_count], dtype=np.int64),
        ]
    )


def from_integer_vector(
    vector: np.ndarray, *, grid: BinGrid, noisy: bool = False
) -> ScoreHistograms:
    """Decode a sum of :func:`to_integer_vector` vectors into pooled histograms on ``grid``.

    With ``noisy`` (each site added evaluation noise), negative counts and loss slots are set
    to 0. That is post-processing of the noisy sum and costs no privacy; without it a negative
    count is an error.

    Raises:
        EvaluationError: for a vector of the wrong type or length, a header that is not ``n``
            times one site's header for this grid, or (without ``noisy``) a negative count.
    """
    values = np.asarray(vector)
    if values.ndim != 1 or values.dtype.kind not in "iu" or values.size < HEADER_SLOTS:
        raise EvaluationError(
            f"an evaluation sum must be a flat integer vector, got {values.dtype} {values.shape}",
            remedy="sum the sites' to_integer_vector outputs",
        )
    values = values.astype(np.int64)
    contributors = int(values[0])
    header = [int(v) for v in values[:HEADER_SLOTS]]
    classes = header[3] // contributors if contributors >= 1 else 0
    expected = [contributors * v for v in _header(grid, classes)]
    if contributors < 1 or header != expected:
        raise EvaluationError(
            f"evaluation sum header {header} is not {max(contributors, 1)} sites' header for "
            f"{grid}",
            remedy="every site must encode with the run's score grid, label set and format",
        )
    if values.size != vector_length(grid, classes):
        raise EvaluationError(
            f"evaluation sum has {values.size} slots, {classes} classes on {grid.bins} bins "
            f"need {vector_length(grid, classes)}",
            remedy="every site must encode with the run's score grid and label set",
        )
    body = values[HEADER_SLOTS:]
    if noisy:
        body = np.maximum(body, 0)
    size = classes * grid.bins
    return ScoreHistograms(
        grid,
        body[:size].reshape(classes, grid.bins),
        body[size : 2 * size].reshape(classes, grid.bins),
        int(body[2 * size]),
        int(body[2 * size + 1]),
        contributors=contributors,
    )


def to_residues(vector: np.ndarray, bits: int) -> np.ndarray:
    """Return ``vector`` modulo ``2**bits`` (uint64; negatives in two's complement).

    Raises:
        EvaluationError: if ``bits`` is outside 2..64 or a value does not fit in ``bits`` signed.
    """
    _check_bits(bits)
    values = np.asarray(vector, dtype=np.int64)
    if values.size and (
        int(values.min()) < -(1 << (bits - 1)) or int(values.max()) >= 1 << (bits - 1)
    ):
        raise EvaluationError(
            f"an evaluation value does not fit in {bits} signed bits",
            remedy="use more secure-aggregation bits",
        )
    residues = values.astype(np.uint64)
    if bits < 64:
        residues &= np.uint64((1 << bits) - 1)
    return residues


def from_residues(residues: np.ndarray, bits: int) -> np.ndarray:
    """Return the int64 values of ``residues`` mod ``2**bits`` in ``[-2**(bits-1), 2**(bits-1))``.

    Raises:
        EvaluationError: if ``bits`` is outside 2..64.
    """
    _check_bits(bits)
    values = np.asarray(residues).astype(np.uint64)
    if bits < 64:
        values = values & np.uint64((1 << bits) - 1)
        high = values >= np.uint64(1 << (bits - 1))
        lifted = values.astype(np.int64)
        lifted[high] -= np.int64(1) << np.int64(bits)
        return lifted
    return values.view(np.int64)


def _check_bits(bits: int) -> None:
    if not 2 <= bits <= 64:
        raise EvaluationError(f"bits must lie in 2..64, got {bits}", remedy="use 32 or 64 bits")
