"""SECAGG.md "Version 3" at the site agent, played to the end in process (issue 28).

R1': the whole run configuration, the run's settings, the algorithm's state layout and a session
nonce are bound; R3': retries are new sessions, audited and capped; R7': a failed local training
is a zero update of weight 0, never a refusal; R10: a site never sends two completed updates
trained from one global model, so differencing two sums is not exact.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from clinfl.algorithms import ModelSpec
from clinfl.algorithms.fedavg import FedAvg
from clinfl.config import MethodConfig
from clinfl.data.imageset import ImageSet
from clinfl.errors import LocalTrainingFailed, ProtocolViolation, RoundAborted
from clinfl.federation.messages import RoundSettings
from clinfl.federation.vectors import flatten_state
from clinfl.privacy.settings import DPSettings
from clinfl.secagg.settings import SecAggConfig, SecAggRequirements, plan_round
from clinfl.secagg.transcript import digest
from clinfl.typing import StateDict
from coordinator.secure_aggregation import SecureAggregator
from site_agent.agent import SiteAgent, state_layout
from site_agent.ledger import SiteLedger
from site_agent.private_training import private_trainer
from site_agent.training import LocalUpdate, SiteTrainer, plain_trainer
from tests.support.federation import SETTINGS, FixedTrainer, make_agents, random_deltas
from tests.support.recording import RecordingParticipant

TEMPLATE: StateDict = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
# five sites, sums of at least two honest sites, one colluder assumed: t = 4 of 5, floor 3
POLICY = SecAggRequirements(min_sites=2, max_colluders=1, max_retries=2)
SECAGG = SecAggConfig(min_sites=2, max_colluders=1)


def _agents(n: int = 5, **options: object) -> tuple[list[SiteAgent], list[tuple[str, str]]]:
    audit: list[tuple[str, str]] = []
    deltas = random_deltas(n, TEMPLATE, seed=3)
    agents = make_agents(
        deltas,
        [10 * (k + 1) for k in range(n)],
        requirements=POLICY,
        audit=lambda site, message: audit.append((site, message)),
    )
    for agent in agents:
        for name, value in options.items():
            setattr(agent, f"_{name}", value)
    return agents, audit


def _reasons(audit: list[tuple[str, str]], site: str) -> str:
    return " | ".join(message for s, message in audit if s == site)


def _params(agents: list[SiteAgent], round_id: int = 1, **options: object):  # type: ignore[no-untyped-def]
    return plan_round(
        run_id="",
        round_id=round_id,
        site_ids=tuple(a.site_id for a in agents),
        vector_length=8,
        min_sites=2,
        **options,  # type: ignore[arg-type]
    )


# R1': the run configuration -----------------------------------------------------------------------


def test_a_site_joined_with_another_configuration_is_refused_by_every_site_before_any_share() -> (
    None
):
    """Finding 1: one run id, one site joined with another configuration (a SCAFFOLD victim
    among FedAvg sites, or other seeds or weight decay): every advertisement check fails, so no
    share, masked input or unmask share ever exists."""
    agents, audit = _agents()
    victim = agents[0]
    victim._config_hash = digest(b"scaffold, weight decay 5.0")  # what the coordinator sent it
    recorded = [RecordingParticipant(agent) for agent in agents]
    for participant in recorded:
        participant.train_round(TEMPLATE, SETTINGS)
    with pytest.raises(RoundAborted):
        SecureAggregator(SECAGG).aggregate(recorded, round_id=1, template=TEMPLATE)
    for agent in agents:
        assert "bound to another config_hash" in _reasons(audit, agent.site_id)
    stages = {stage for participant in recorded for stage, _ in participant.to_coordinator}
    assert stages <= {"train", "advertise"}, "a stage past the advertisement check answered"


def test_the_same_configuration_completes_the_round_exactly() -> None:
    agents, _ = _agents()
    for agent in agents:
        agent.train_round(TEMPLATE, SETTINGS)
    update = SecureAggregator(SECAGG).aggregate(agents, round_id=1, template=TEMPLATE)
    assert update.site_ids == frozenset(a.site_id for a in agents)


def test_round_settings_other_than_the_joined_configuration_are_refused_before_training() -> None:
    agents, audit = _agents(1)
    (agent,) = agents
    agent._expected_settings = partial(RoundSettings, local_epochs=1, batch_size=8, lr=1e-3)
    with pytest.raises(ProtocolViolation, match="not the ones of the run configuration"):
        agent.train_round(TEMPLATE, replace(SETTINGS, batch_size=9))
    assert "not the ones of the run configuration" in _reasons(audit, agent.site_id)
    agent.train_round(TEMPLATE, SETTINGS)  # the run's own settings train


def test_a_global_state_with_another_algorithms_aux_slots_is_refused() -> None:
    """Finding 1's lever: a FedAvg site used to send zeros in SCAFFOLD's ``aux/`` slots, so
    the ``aux/`` half of the sum was the SCAFFOLD victim's alone."""
    agents, audit = _agents(1)
    (agent,) = agents
    agent._layout = state_layout(TEMPLATE)
    scaffold_state = {**TEMPLATE, "aux/scaffold/c/w": torch.zeros(3, 2)}
    with pytest.raises(ProtocolViolation, match="does not produce: aux/scaffold/c/w"):
        agent.train_round(scaffold_state, SETTINGS)
    with pytest.raises(ProtocolViolation, match="expects"):
        agent.train_round({**TEMPLATE, "b": torch.zeros(3)}, SETTINGS)
    assert "aux/scaffold/c/w" in _reasons(audit, agent.site_id)
    agent.train_round(TEMPLATE, SETTINGS)


# R3': sessions and retries ------------------------------------------------------------------------


def test_a_retry_is_a_new_session_and_refuses_the_earlier_sessions_advertisements() -> None:
    agents, audit = _agents()
    for agent in agents:
        agent.train_round(TEMPLATE, SETTINGS)
    first = _params(agents)
    old_adverts = tuple(agent.secagg_advertise(first) for agent in agents)
    # the coordinator abandons the attempt and retries round 1 with a new session
    for agent in agents:
        agent.train_round(TEMPLATE, SETTINGS)
    second = _params(agents)
    assert second.session != first.session
    new_adverts = tuple(agent.secagg_advertise(second) for agent in agents)
    mixed = (old_adverts[0], *new_adverts[1:])
    for agent in agents[1:]:
        with pytest.raises(ProtocolViolation, match="bound to another params_hash"):
            agent.secagg_graph(mixed)
    for agent in agents:
        assert "retried by the coordinator: attempt 2" in _reasons(audit, agent.site_id)


def test_a_session_nonce_is_used_once_and_one_training_takes_one_session() -> None:
    agents, _ = _agents(3)
    agent = agents[0]
    agent.train_round(TEMPLATE, SETTINGS)
    params = _params(agents, session="ab" * 16)
    agent.secagg_advertise(params)
    with pytest.raises(ProtocolViolation, match="a session nonce is used once"):
        agent.secagg_advertise(replace(params, session="cd" * 16))  # same training, new session
    agent.train_round(TEMPLATE, SETTINGS)  # a retry: a new training
    with pytest.raises(ProtocolViolation, match="a session nonce is used once"):
        agent.secagg_advertise(params)  # the earlier session's nonce
    agent.secagg_advertise(replace(params, session="ef" * 16))
    agent.train_round(TEMPLATE, SETTINGS)
    with pytest.raises(ProtocolViolation, match="session nonce must be 32 lower-case hex"):
        agent.secagg_advertise(replace(params, session="not hex"))


def test_retries_are_capped_by_the_policy_and_each_is_audited() -> None:
    agents, audit = _agents(1)
    (agent,) = agents
    for _ in range(1 + POLICY.max_retries):
        agent.train_round(TEMPLATE, SETTINGS)
    with pytest.raises(ProtocolViolation, match="allows 2 retries"):
        agent.train_round(TEMPLATE, SETTINGS)
    reasons = _reasons(audit, agent.site_id)
    assert reasons.count("retried by the coordinator") == POLICY.max_retries
    assert "refuses a retry of round 1" in reasons
    agent.train_round(TEMPLATE, replace(SETTINGS, round=2))  # it takes part again next round


# R10: no exact differencing -----------------------------------------------------------------------


def test_two_sums_over_one_global_model_cannot_be_differenced() -> None:
    """Finding 4 to the end: round 1 completes with all five sites (deterministic trainers, so
    retraining would give the same updates); the coordinator then claims it failed and runs the
    same model again without the victim. The four others refuse to train it, so no second sum
    exists and the victim's update cannot be computed as a difference."""
    agents, audit = _agents()
    victim, others = agents[0], agents[1:]
    for agent in agents:
        agent.train_round(TEMPLATE, SETTINGS)
    first = SecureAggregator(SECAGG).aggregate(agents, round_id=1, template=TEMPLATE)
    assert victim.site_id in first.site_ids
    trained = []
    for agent in others:
        try:
            agent.train_round(TEMPLATE, replace(SETTINGS, round=2))
        except ProtocolViolation:
            continue
        trained.append(agent)
    second = None
    if trained:
        try:
            second = SecureAggregator(SECAGG).aggregate(trained, round_id=2, template=TEMPLATE)
        except RoundAborted:
            second = None
    if second is not None:  # the attacker's computation: the victim's weighted update
        weight_1, weight_2 = first.num_samples, second.num_samples
        recovered = {
            name: first.mean_delta[name] * weight_1 - second.mean_delta[name] * weight_2
            for name in TEMPLATE
        }
        truth = victim._trainer.train_round(TEMPLATE, SETTINGS)  # type: ignore[attr-defined]
        leak = all(
            torch.allclose(recovered[name], truth.delta[name] * truth.num_samples, atol=1e-3)
            for name in TEMPLATE
        )
        assert not leak, "the victim's update is the difference of the two sums"
    assert trained == [], "a site trained a global model it already sent an update from"
    for agent in others:
        assert "never trains one model twice" in _reasons(audit, agent.site_id)
    moved = {name: value + 0.5 for name, value in TEMPLATE.items()}
    for agent in others:  # a new model trains as usual
        agent.train_round(moved, replace(SETTINGS, round=2))


# R7': a failed training is not a refusal ----------------------------------------------------------


class DivergingTrainer(FixedTrainer):
    def train_round(self, global_state: StateDict, settings: RoundSettings) -> LocalUpdate:
        raise LocalTrainingFailed("local loss became nan", remedy="lower --lr")


def test_a_diverging_site_takes_part_with_a_zero_update_of_weight_zero() -> None:
    """Finding 2's oracle: the fact of a refusal told the coordinator that a crafted model made
    the site's training diverge. Now the site answers every stage as usual; only the masked
    sum's weight moves, and its failure is in its own audit log."""
    agents, audit = _agents()
    diverging = agents[0]
    healthy = FixedTrainer(diverging.site_id, diverging._trainer.delta, 10)  # type: ignore[attr-defined]
    diverging._trainer = DivergingTrainer(healthy.site_id, healthy.delta, 10)
    reports = [RecordingParticipant(agent).train_round(TEMPLATE, SETTINGS) for agent in agents]
    assert {type(report) for report in reports} == {type(reports[1])}
    assert reports[0] == replace(reports[1], site_id=diverging.site_id)
    update = SecureAggregator(SECAGG).aggregate(agents, round_id=1, template=TEMPLATE)
    assert update.site_ids == frozenset(a.site_id for a in agents)  # it took part to the end
    expected_weight = sum(10 * (k + 1) for k in range(1, 5))
    assert update.num_samples == expected_weight  # it weighed nothing
    truth = sum(
        flatten_state(a._trainer.delta, template=TEMPLATE) * a._trainer.num_samples  # type: ignore[attr-defined]
        for a in agents[1:]
    )
    mean = flatten_state(update.mean_delta, template=TEMPLATE)
    assert np.allclose(mean, truth / expected_weight, atol=1e-3)
    assert "training failed (local loss became nan)" in _reasons(audit, diverging.site_id)


class _FailingStep(FedAvg):
    """FedAvg whose loss is NaN, or whose step raises a numerical error (a crafted model)."""

    def __init__(self, failure: str) -> None:
        super().__init__(MethodConfig(name="fedavg", backbone="small", width=8))
        self.failure = failure

    def local_loss(self, model, images, targets, global_state, memory=None):  # type: ignore[no-untyped-def]
        loss = super().local_loss(model, images, targets, global_state, memory)
        if self.failure == "nan":
            return loss * float("nan")
        raise RuntimeError("a numerical error in the backward pass")


@pytest.mark.parametrize("failure", ["nan", "runtime"])
def test_every_failure_inside_local_steps_is_a_local_training_failure(failure: str) -> None:
    """R7': whatever a crafted model makes the steps do (a NaN loss, a numerical error), the
    trainer raises LocalTrainingFailed, which the agent turns into a zero update; no other
    error reaches the coordinator as a refusal or a crash."""
    spec = ModelSpec(num_classes=2, image_size=16, federation_seed=3, init_seed=0)
    algorithm = _FailingStep(failure)
    rng = np.random.default_rng(0)
    data = ImageSet(
        rng.integers(0, 256, (12, 16, 16), dtype=np.uint8),
        (rng.random((12, 2)) < 0.5).astype(np.uint8),
        np.arange(12, dtype=np.int64),
        ("a", "b"),
    )
    trainer = plain_trainer("site-1", data, algorithm, spec, weight_decay=0.0)
    state = algorithm.initial_state(algorithm.build_model(spec))
    with pytest.raises(LocalTrainingFailed):
        trainer.train_round(state, RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3))


# The second review of version 3 (state across rounds, latency, probes) ---------------------------


def _data(count: int = 24) -> ImageSet:
    rng = np.random.default_rng(1)
    return ImageSet(
        rng.integers(0, 256, (count, 16, 16), dtype=np.uint8),
        (rng.random((count, 2)) < 0.5).astype(np.uint8),
        np.arange(count, dtype=np.int64),
        ("a", "b"),
    )


def _dp_trainer(algorithm: FedAvg, spec: ModelSpec, tmp_path: Path) -> SiteTrainer:
    """A DP-SGD trainer on :func:`_data` (hooks mode, a budget no test reaches)."""
    dp = DPSettings(
        epsilon_budget=1e6,
        delta=1e-5,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        target_epsilon_per_round=None,
        accountant="rdp",
        secure_rng=False,
        grad_sample_mode="hooks",
    )
    return private_trainer(
        "site-1",
        _data(),
        algorithm,
        spec,
        dp=dp,
        ledger=SiteLedger(tmp_path / "state"),
        run_id="run",
        batch_size=8,
        local_epochs=1,
        weight_decay=0.0,
    )


def test_a_rounds_update_does_not_depend_on_the_models_of_earlier_rounds() -> None:
    """Finding A1: AdamW's moments outlived rounds, so a crafted model sent in one round froze
    or broke a site's later rounds, and a later honest round's sum held one victim's update.
    Now a site that trained an earlier model gives, for the next model, the update of a site
    that never trained before (same data, same randomness)."""
    spec = ModelSpec(num_classes=2, image_size=16, federation_seed=3, init_seed=0)
    algorithm = FedAvg(MethodConfig(name="fedavg", backbone="small", width=8))
    same_bytes = lambda size: b"\x01" * size  # noqa: E731 - the same shuffle in every round
    settings = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-2)
    veteran = plain_trainer(
        "site-1", _data(), algorithm, spec, weight_decay=0.0, random_bytes=same_bytes
    )
    newcomer = plain_trainer(
        "site-1", _data(), algorithm, spec, weight_decay=0.0, random_bytes=same_bytes
    )
    first = algorithm.initial_state(algorithm.build_model(spec))
    crafted = {name: value * 3.0 for name, value in first.items()}
    veteran.train_round(crafted, settings)  # an earlier round, on a model the coordinator chose
    honest = {name: value + 0.01 for name, value in first.items()}
    after = veteran.train_round(honest, replace(settings, round=2))
    fresh = newcomer.train_round(honest, replace(settings, round=2))
    for name in honest:
        assert torch.allclose(after.delta[name], fresh.delta[name], atol=1e-6), name


def test_a_failed_training_goes_through_every_batch_as_a_healthy_one_does() -> None:
    """Finding B: a training that failed returned at its first bad step, so its latency told
    the coordinator that a crafted model made this site's loss overflow (93 probes gave every
    per-class positive count). Now the remaining batches go through the model all the same."""
    spec = ModelSpec(num_classes=2, image_size=16, federation_seed=3, init_seed=0)
    calls = {"failing": 0, "healthy": 0}

    class Counting(_FailingStep):
        def local_loss(self, model, images, targets, global_state, memory=None):  # type: ignore[no-untyped-def]
            calls[self.failure if self.failure == "healthy" else "failing"] += 1
            loss = FedAvg.local_loss(self, model, images, targets, global_state, memory)
            return loss if self.failure == "healthy" else loss * float("nan")

    settings = RoundSettings(round=1, local_epochs=2, batch_size=8, lr=1e-3)
    steps = {"failing": 0, "healthy": 0}
    for kind in ("failing", "healthy"):
        algorithm = Counting(kind if kind == "healthy" else "nan")
        trainer = plain_trainer("site-1", _data(), algorithm, spec, weight_decay=0.0)
        step = trainer.strategy.step

        def counted(*args: object, kind: str = kind, step: object = step) -> None:
            steps[kind] += 1
            step(*args)  # type: ignore[operator]

        trainer.strategy.step = counted  # type: ignore[method-assign]
        state = algorithm.initial_state(algorithm.build_model(spec))
        try:
            trainer.train_round(state, settings)
        except LocalTrainingFailed:
            assert kind == "failing"
    assert calls["failing"] == calls["healthy"] == 2 * 3  # 2 epochs of 3 batches, both
    assert steps["failing"] == steps["healthy"] == 2 * 3  # the same optimiser steps, both


def test_a_dp_trainer_starts_every_round_with_fresh_optimiser_state(tmp_path: Path) -> None:
    """Finding A1 under DP-SGD: Opacus' AdamW keeps no moments from one round to the next."""
    spec = ModelSpec(num_classes=2, image_size=16, federation_seed=3, init_seed=0)
    algorithm = FedAvg(MethodConfig(name="fedavg", backbone="small", width=8))
    trainer = _dp_trainer(algorithm, spec, tmp_path)
    state = algorithm.initial_state(algorithm.build_model(spec))
    settings = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3)
    trainer.train_round(state, settings)
    optimizer = trainer.strategy.optimizer  # type: ignore[attr-defined]
    assert len(optimizer.state) > 0  # the round built AdamW moments
    trainer.strategy.begin_round(replace(settings, round=2))
    assert len(optimizer.state) == 0


def test_a_run_may_abandon_only_a_few_of_a_sites_attempts() -> None:
    """Finding B/D: probes with rounds the coordinator never completes, each under a new round
    id, were accepted without limit. Now the policy caps them per run and each is audited."""
    agents, audit = _agents(1)
    (agent,) = agents
    agent._requirements = replace(POLICY, max_abandoned_rounds=3)
    for round_id in range(1, 4):  # three probes, none completed
        agent.train_round(
            {k: v + round_id for k, v in TEMPLATE.items()}, replace(SETTINGS, round=round_id)
        )
    with pytest.raises(ProtocolViolation, match="3 attempts of this run ended before"):
        agent.train_round({k: v + 4 for k, v in TEMPLATE.items()}, replace(SETTINGS, round=4))
    assert "attempt(s) of this run ended before the site completed them" in _reasons(
        audit, agent.site_id
    )


def test_one_update_per_model_holds_across_runs_and_signed_zeros(tmp_path: Path) -> None:
    """Finding C: the rule was kept per run id, and -0.0 made a model look new."""
    agents, _ = _agents(1)
    (agent,) = agents
    agent._rounds = SiteLedger(tmp_path / "state")
    agent._run_id = "run-a"
    agent._requirements = replace(POLICY, required=False)
    agent._report_counts = True
    agent.train_round(TEMPLATE, SETTINGS)
    agent.upload_plain()  # completed: an update from TEMPLATE left the site
    agent._run_id = "another-run"  # a fresh join under a new run id
    with pytest.raises(ProtocolViolation, match="never trains one model twice"):
        agent.train_round(TEMPLATE, SETTINGS)
    signed_zero = {name: -value for name, value in TEMPLATE.items()}  # every 0.0 becomes -0.0
    assert signed_zero["w"].numpy().tobytes() != TEMPLATE["w"].numpy().tobytes()  # looks new
    with pytest.raises(ProtocolViolation, match="never trains one model twice"):
        agent.train_round(signed_zero, replace(SETTINGS, round=2))


def test_a_failed_dp_round_does_not_break_the_sites_next_round(tmp_path: Path) -> None:
    """Second review, finding 1: a NaN loss under DP-SGD left Opacus counting a forward pass
    without its backward, so every later round of that site failed, and the others' zero
    updates left one victim alone in every later sum. Now the next round trains."""
    spec = ModelSpec(num_classes=2, image_size=16, federation_seed=3, init_seed=0)
    algorithm = FedAvg(MethodConfig(name="fedavg", backbone="small", width=8))
    trainer = _dp_trainer(algorithm, spec, tmp_path)
    honest = algorithm.initial_state(algorithm.build_model(spec))
    crafted = {name: value.clone() for name, value in honest.items()}
    bias = next(name for name in crafted if name.endswith("bias"))
    crafted[bias] = torch.full_like(crafted[bias], float("nan"))
    settings = RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3)
    with pytest.raises(LocalTrainingFailed):
        trainer.train_round(crafted, settings)
    update = trainer.train_round(honest, replace(settings, round=2))
    assert all(bool(torch.isfinite(value).all()) for value in update.delta.values())


def test_a_crafted_round_leaves_no_large_algorithm_memory() -> None:
    """Second review, finding 2: a crafted model left SCAFFOLD's control variate at 8.6e35, so
    the next honest-looking model made every poisoned site's loss overflow, and not the
    victim's. The memory a round leaves is bounded by what the sum could carry."""
    from clinfl.algorithms import create_algorithm
    from site_agent.training import MEMORY_BOUND

    spec = ModelSpec(num_classes=2, image_size=16, federation_seed=3, init_seed=0)
    algorithm = create_algorithm(MethodConfig(name="scaffold", backbone="small", width=8))
    trainer = plain_trainer("site-1", _data(), algorithm, spec, weight_decay=0.0)
    state = algorithm.initial_state(algorithm.build_model(spec))
    head = next(name for name in state if name.endswith("weight") and "fc" in name)
    crafted = {**state, head: state[head] * 1e6}  # huge but finite gradients
    trainer.train_round(crafted, RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-3))
    memory = trainer._memory
    assert memory, "the round left a control variate"
    assert max(float(value.abs().max()) for value in memory.values()) <= MEMORY_BOUND
