"""SecureAggregator over site agents: same mean as plain aggregation, dropouts, refusals, privacy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from clinfl.config import Dropout, SecAggConfig
from clinfl.errors import RoundAborted
from clinfl.secagg.messages import MaskedInput
from clinfl.secagg.settings import SecAggRequirements
from clinfl.secagg.stages import Stage, stage_name
from clinfl.simulation.dropouts import DroppingParticipant
from coordinator.aggregation import PlainAggregator
from coordinator.secure_aggregation import SecureAggregator
from tests.support.federation import SETTINGS, make_agents, random_deltas
from tests.support.recording import RecordingParticipant

TEMPLATE = {"a.weight": torch.zeros(40, 30), "b.bias": torch.zeros(17)}
SAMPLES = [120, 45, 300, 80, 9]


def _trained(agents: list) -> list:
    for agent in agents:
        agent.train_round(TEMPLATE, SETTINGS)
    return agents


def _plain_mean(deltas: list, weights: list[int]) -> dict[str, torch.Tensor]:
    total = sum(weights)
    return {
        name: sum(d[name] * w for d, w in zip(deltas, weights, strict=True)) / total
        for name in TEMPLATE
    }


def test_secure_mean_equals_plain_mean_within_the_quantisation_bound() -> None:
    deltas = random_deltas(5, TEMPLATE)
    config = SecAggConfig()
    secure = SecureAggregator(config).aggregate(
        _trained(make_agents(deltas, SAMPLES)), round_id=1, template=TEMPLATE
    )
    plain_agents = make_agents(deltas, SAMPLES, requirements=SecAggRequirements(required=False))
    plain = PlainAggregator().aggregate(_trained(plain_agents), round_id=1, template=TEMPLATE)
    assert secure.num_samples == plain.num_samples == sum(SAMPLES)
    assert secure.site_ids == plain.site_ids == {f"site-{k}" for k in range(1, 6)}
    scale = 2.0 ** np.floor(np.log2((2**32 - 1) / (5 * config.weight_cap * 2 * config.clip)))
    for name in TEMPLATE:
        error = (secure.mean_delta[name] - plain.mean_delta[name]).abs().max().item()
        assert error <= 1 / scale + 1e-6
        assert error > 0  # it really went through quantisation
        expected = _plain_mean(deltas, SAMPLES)[name]
        assert torch.allclose(plain.mean_delta[name], expected, atol=1e-6)


def test_each_stage_is_timed_under_its_name_in_the_stage_order() -> None:
    aggregator = SecureAggregator(SecAggConfig())
    agents = _trained(make_agents(random_deltas(5, TEMPLATE), SAMPLES))
    aggregator.aggregate(agents, round_id=1, template=TEMPLATE)
    assert list(aggregator.stage_seconds) == [stage_name(stage) for stage in Stage]
    assert list(aggregator.stage_seconds)[3] == "masked-input"
    with pytest.raises(RoundAborted):  # too few sites: no stage ran, none is timed
        aggregator.aggregate(agents[:1], round_id=2, template=TEMPLATE)
    assert aggregator.stage_seconds == {}


def test_weight_cap_limits_a_large_site() -> None:
    deltas = random_deltas(4, TEMPLATE)
    requirements = SecAggRequirements(max_weight=100)
    agents = _trained(make_agents(deltas, [1000, 50, 70, 30], requirements=requirements))
    result = SecureAggregator(SecAggConfig(weight_cap=100)).aggregate(
        agents, round_id=1, template=TEMPLATE
    )
    assert result.num_samples == 100 + 50 + 70 + 30
    expected = _plain_mean(deltas, [100, 50, 70, 30])
    assert torch.allclose(result.mean_delta["a.weight"], expected["a.weight"], atol=1e-4)


@pytest.mark.parametrize("stage", ["advertise", "share", "masked-input", "consistency", "unmask"])
def test_dropout_at_any_stage_completes_with_the_survivors(stage: str) -> None:
    deltas = random_deltas(5, TEMPLATE)
    agents = _trained(make_agents(deltas, SAMPLES))
    wrapped = [DroppingParticipant(a, [Dropout("site-2", stage)]) for a in agents]
    result = SecureAggregator(SecAggConfig()).aggregate(wrapped, round_id=1, template=TEMPLATE)
    included = stage in ("consistency", "unmask")  # its masked input had arrived
    assert ("site-2" in result.site_ids) == included
    keep = [k for k in range(5) if included or k != 1]
    expected = _plain_mean([deltas[k] for k in keep], [SAMPLES[k] for k in keep])
    assert result.num_samples == sum(SAMPLES[k] for k in keep)
    for name in TEMPLATE:
        assert torch.allclose(result.mean_delta[name], expected[name], atol=1e-4)


def test_too_many_dropouts_abort_and_name_the_threshold() -> None:
    agents = _trained(make_agents(random_deltas(5, TEMPLATE), SAMPLES[:5]))
    drops = [Dropout("site-1", "masked-input"), Dropout("site-3", "share")]
    wrapped = [DroppingParticipant(a, drops) for a in agents]
    with pytest.raises(RoundAborted, match=r"only 3 site\(s\) remain, the threshold is 4"):
        SecureAggregator(SecAggConfig()).aggregate(wrapped, round_id=1, template=TEMPLATE)


def test_site_refusing_parameters_is_reported_in_the_abort() -> None:
    strict = SecAggRequirements(min_sites=5)  # the coordinator proposes threshold 3
    agents = _trained(make_agents(random_deltas(3, TEMPLATE), [10, 10, 10], requirements=strict))
    with pytest.raises(
        RoundAborted, match="refused: site-1: round 1 refused: threshold 3 is below"
    ):
        SecureAggregator(SecAggConfig()).aggregate(agents, round_id=1, template=TEMPLATE)


def test_site_requiring_secure_aggregation_refuses_to_send_in_the_clear() -> None:
    agents = _trained(make_agents(random_deltas(3, TEMPLATE), [10, 20, 30]))
    with pytest.raises(RoundAborted, match="refuses to send its update in the clear"):
        PlainAggregator().aggregate(agents, round_id=1, template=TEMPLATE)


def test_coordinator_never_holds_a_single_unmasked_vector() -> None:
    deltas = random_deltas(5, TEMPLATE)
    agents = [RecordingParticipant(a) for a in _trained(make_agents(deltas, SAMPLES))]
    SecureAggregator(SecAggConfig()).aggregate(agents, round_id=1, template=TEMPLATE)
    for agent, delta in zip(agents, deltas, strict=True):
        kinds = {type(reply).__name__ for _, reply in agent.to_coordinator}
        assert "SiteContribution" not in kinds  # upload_plain was never called (it would raise)
        masked = [reply for _, reply in agent.to_coordinator if isinstance(reply, MaskedInput)]
        assert len(masked) == 1
        vector = masked[0].vector.astype(np.float64)
        flat = np.concatenate([delta[n].reshape(-1).numpy() for n in sorted(TEMPLATE)])
        # nothing in the masked vector tracks the update, and the sample count is not visible
        assert abs(np.corrcoef(vector[:-3], flat)[0, 1]) < 0.1
        assert int(masked[0].vector[-3]) != SAMPLES[agents.index(agent)]
        for _, reply in agent.to_coordinator:
            for leak in ("num_samples", "weight", "mean_loss", "steps"):
                assert not hasattr(reply, leak)


def _histogram_p_value(vector: np.ndarray, bins: int = 64) -> float:
    top = (vector.astype(np.uint64) >> np.uint64(32 - 6)).astype(np.int64)
    counts = np.bincount(top, minlength=bins)
    return float(chisquare(counts).pvalue)


def test_masked_vector_is_indistinguishable_from_uniform() -> None:
    big = {"w": torch.zeros(60_000)}
    deltas = [{"w": torch.full((60_000,), 0.01)} for _ in range(4)]  # a very regular input
    agents = [RecordingParticipant(a) for a in make_agents(deltas, [10, 10, 10, 10])]
    for agent in agents:
        agent.train_round(big, SETTINGS)
    SecureAggregator(SecAggConfig()).aggregate(agents, round_id=1, template=big)
    masked = next(r for _, r in agents[0].to_coordinator if isinstance(r, MaskedInput)).vector
    assert _histogram_p_value(masked) > 1e-4
    # the same test does reject the unmasked encoding, so it has the power to fail
    unmasked = np.full(60_000, 10 * 2**15, dtype=np.uint32) * np.uint32(1)
    assert _histogram_p_value(unmasked) < 1e-10
