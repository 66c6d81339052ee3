"""Whole protocol rounds: exact sums under random dropouts at every stage (property tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinfl.errors import RoundAborted
from clinfl.secagg.settings import RoundParameters, plan_round
from tests.support.secagg_round import STAGES, Federation, run_round


def _params(
    federation: Federation, length: int, *, bits: int, degree: int | None
) -> RoundParameters:
    return plan_round(
        round_id=7,
        site_ids=federation.site_ids,
        vector_length=length,
        min_sites=2,
        bits=bits,
        weight_cap=4,
        degree=degree,
    )


def _inputs(params: RoundParameters, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dtype = np.uint32 if params.bits <= 32 else np.uint64
    return {
        s: rng.integers(0, 2**params.bits, params.masked_length, dtype=np.uint64).astype(dtype)
        for s in params.site_ids
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 9),
    length=st.integers(1, 40),
    bits=st.sampled_from([20, 32, 48, 64]),
    sparse=st.booleans(),
    drop_fraction=st.floats(0, 0.6),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_is_exact_under_random_dropouts(
    n: int, length: int, bits: int, sparse: bool, drop_fraction: float, seed: int
) -> None:
    federation = Federation.of(n)
    params = _params(federation, length, bits=bits, degree=2 if sparse else None)
    inputs = _inputs(params, seed)
    rng = np.random.default_rng(seed)
    drops = {
        s: STAGES[int(rng.integers(len(STAGES)))]
        for s in params.site_ids
        if rng.random() < drop_fraction
    }
    try:
        total, survivors = run_round(federation, params, inputs, drops=drops)
    except RoundAborted as aborted:
        assert "nothing was applied" in aborted.message
        # an abort is only allowed when a stage really had fewer than t sites or shares
        assert len(drops) > 0
        return
    expected = sum(inputs[s].astype(object) for s in survivors) % (2**bits)
    assert [int(v) for v in total] == [int(v) for v in expected]
    # no site that dropped before sending its masked input is in the sum
    early = {s for s, stage in drops.items() if STAGES.index(stage) <= STAGES.index("masked-input")}
    assert not survivors & early
    assert len(survivors) >= params.threshold


@pytest.mark.parametrize("stage", STAGES)
def test_one_dropout_at_each_stage_keeps_the_round(stage: str) -> None:
    federation = Federation.of(5)
    params = _params(federation, 16, bits=32, degree=None)
    inputs = _inputs(params, 1)
    dropped = params.site_ids[2]
    total, survivors = run_round(federation, params, inputs, drops={dropped: stage})
    in_sum = stage in ("consistency", "unmask")  # its masked input had already arrived
    assert (dropped in survivors) == in_sum
    expected = sum(inputs[s].astype(np.uint64) for s in survivors) % (2**32)
    assert np.array_equal(total.astype(np.uint64), expected)


def test_too_many_dropouts_abort_with_a_clear_message() -> None:
    federation = Federation.of(5)
    params = _params(federation, 8, bits=32, degree=None)  # complete graph, c = 1: t = 4
    assert params.threshold == 4
    drops = dict.fromkeys(params.site_ids[:2], "masked-input")
    with pytest.raises(
        RoundAborted, match=r"masked_input: only 3 site\(s\) remain, the threshold is 4"
    ):
        run_round(federation, params, _inputs(params, 2), drops=drops)


def test_complete_graph_up_to_64_sites_whatever_the_proposal() -> None:
    federation = Federation.of(64)
    params = plan_round(
        round_id=3, site_ids=federation.site_ids, vector_length=4, min_sites=3, degree=4
    )
    assert params.degree == 63
    assert all(len(v) == 63 for v in params.neighbours(federation.site_ids, seed=b"s").values())


def test_sparse_graph_has_logarithmic_degree_and_exact_sum() -> None:
    federation = Federation.of(70)
    params = plan_round(round_id=3, site_ids=federation.site_ids, vector_length=4, min_sites=3)
    assert params.degree == 14 and params.degree < len(federation.site_ids) - 1
    inputs = _inputs(params, 3)
    drops = {params.site_ids[0]: "masked-input", params.site_ids[5]: "unmask"}
    total, survivors = run_round(federation, params, inputs, drops=drops)
    expected = sum(inputs[s].astype(np.uint64) for s in survivors) % (2**32)
    assert np.array_equal(total.astype(np.uint64), expected)
