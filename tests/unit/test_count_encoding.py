"""Evaluation sessions: exact count encoding, the purpose in the parameters, the site's ledger."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from clinfl.config.policy import parse_policy
from clinfl.errors import ValidationError, WireError
from clinfl.evaluation.grid import BinGrid
from clinfl.evaluation.noise import evaluation_epsilon, noise_for_epsilon
from clinfl.secagg.encoding import decode_counts, encode_counts
from clinfl.secagg.settings import RoundParameters
from clinfl.transport.wire import decode, encode
from site_agent.federated_scoring import SiteScorer
from site_agent.ledger import SiteLedger

PARAMS = RoundParameters(
    run_id="r",
    round_id=1,
    site_ids=("a", "b", "c"),
    threshold=2,
    degree=2,
    bits=8,
    clip=0.5,
    scale=1.0,
    weight_cap=1,
    vector_length=4,
    session="0" * 32,
    purpose="evaluation",
)


def test_counts_encode_in_twos_complement_with_one_contributor_slot() -> None:
    encoded = encode_counts(np.array([1, -2, 3, 0]), params=PARAMS)
    assert encoded.tolist() == [1, 254, 3, 0, 1]  # -2 mod 256 = 254; the contributor slot 1


def test_the_sum_of_three_sites_decodes_to_the_summed_counts_and_three_contributors() -> None:
    vectors = ([1, -2, 3, 0], [0, 5, 0, 7], [2, 0, -1, 1])
    total = sum(encode_counts(np.array(v), params=PARAMS).astype(np.int64) for v in vectors) % 256
    decoded = decode_counts(total.astype(np.uint32), params=PARAMS)
    assert decoded.counts.tolist() == [3, 3, 2, 8] and decoded.contributors == 3
    negative = encode_counts(np.array([-5, -5, 0, 0]), params=PARAMS).astype(np.int64)
    assert decode_counts(negative.astype(np.uint32), params=PARAMS).counts.tolist()[:2] == [-5, -5]


def test_a_count_that_could_overflow_the_sum_of_the_round_s_sites_is_refused() -> None:
    limit = 127 // 3  # three sites' values of this size cannot wrap 8 signed bits
    assert encode_counts(np.array([limit, -limit, 0, 0]), params=PARAMS)[0] == limit
    with pytest.raises(ValueError, match="overflow"):
        encode_counts(np.array([limit + 1, 0, 0, 0]), params=PARAMS)
    with pytest.raises(ValueError, match="integers"):
        encode_counts(np.array([0.5, 0, 0, 0]), params=PARAMS)
    with pytest.raises(ValueError, match="only in evaluation sessions"):
        encode_counts(
            np.zeros(4, dtype=np.int64), params=dataclasses.replace(PARAMS, purpose="update")
        )


def test_the_purpose_is_bound_into_the_digest_and_travels_checked() -> None:
    update = dataclasses.replace(PARAMS, purpose="update")
    assert update.digest() != PARAMS.digest()
    assert (update.masked_length, PARAMS.masked_length) == (7, 5)
    assert decode(encode(PARAMS), RoundParameters) == PARAMS
    forged = encode(PARAMS).replace(b'"evaluation"', b'"anything"')
    with pytest.raises(WireError, match="one of update, evaluation"):
        decode(forged, RoundParameters)


def test_the_evaluation_epsilon_option_is_validated() -> None:
    base = '[reporting]\nmetrics = ["auc"]\n'
    assert parse_policy(base).reporting.evaluation_epsilon is None
    assert parse_policy(base + "evaluation_epsilon = 8\n").reporting.evaluation_epsilon == 8
    for bad in ("0", "-1", "inf", "true"):
        with pytest.raises(ValidationError, match=r"reporting\.evaluation_epsilon"):
            parse_policy(base + f"evaluation_epsilon = {bad}\n")


def test_a_site_scores_one_model_per_round_and_never_one_model_twice(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path)
    assert ledger.claim_evaluation("run", 1, model_hash=b"m1", epsilon=None) is None
    assert "round 1" in str(ledger.claim_evaluation("run", 1, model_hash=b"m2", epsilon=None))
    assert "this global model" in str(
        ledger.claim_evaluation("run", 2, model_hash=b"m1", epsilon=1)
    )
    assert ledger.claim_evaluation("run", 2, model_hash=b"m2", epsilon=2.5) is None
    assert ledger.use_evaluation_session("run", 2, "s" * 32)
    assert not ledger.use_evaluation_session("run", 2, "t" * 32)  # one session per evaluation
    assert not ledger.use_evaluation_session("run", 1, "s" * 32)  # a nonce is used once
    assert not ledger.use_evaluation_session("run", 3, "u" * 32)  # nothing scored for round 3
    assert [(e.round, e.epsilon) for e in ledger.evaluations()] == [(1, None), (2, 2.5)]


class _Sets:
    def targets(self, split: str) -> np.ndarray:
        return np.array([[1, 0], [0, 1], [1, 1], [0, 0]])

    def probabilities(self, state: object, split: str) -> np.ndarray:
        return np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.6], [0.3, 0.4]])


def test_the_site_s_vector_is_its_two_splits_and_noise_costs_the_policy_s_epsilon() -> None:
    grid = BinGrid(4)
    plain = SiteScorer(_Sets, 2, grid=grid).vector({})
    assert plain.size == SiteScorer(_Sets, 2, grid=grid).vector_length == 2 * (6 + 16 + 2)
    half = plain.size // 2
    assert plain[:6].tolist() == [
        1,
        1,
        0,
        2,
        4,
        0,
    ]  # one site, format 1, uniform, 2 classes, 4 bins
    assert plain[6:14].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]  # positives: class 0 then class 1
    assert np.array_equal(plain[:half], plain[half:])  # both splits alike here
    noisy = SiteScorer(_Sets, 2, grid=grid, epsilon=4.0)
    assert noisy.epsilon == pytest.approx(evaluation_epsilon(noise_for_epsilon(4.0, 2), 2))
    assert noisy.epsilon <= 4.0
    draws = noisy.vector({})
    assert draws[:6].tolist() == plain[:6].tolist()  # the header carries no noise
    assert not np.array_equal(draws, noisy.vector({}))  # fresh noise every evaluation
