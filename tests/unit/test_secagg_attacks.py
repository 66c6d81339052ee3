"""Issue 14's attacks, each played to the end by a lying coordinator with up to ``c`` colluders.

Every attack runs through :class:`tests.support.adversary.Adversary`. Each test checks two things:
the honest sites refuse (a :class:`~clinfl.errors.ProtocolViolation` whose reason reaches their
audit hook), and, from everything the coordinator collected (masked vectors, revealed shares, the
colluders' whole state), :meth:`Adversary.recover` computes neither an honest site's input nor a
sum of fewer than ``min_sites`` honest inputs. The harness tests at the top show that recover()
does compute a victim's input when a rule is bypassed, so "nothing recovered" means something.

Attack 6 (a filesystem oracle at join) is tested where joins are handled:
``tests/unit/test_deployed_join.py::test_a_path_that_exists_and_one_that_does_not_get_byte_identical_refusals``
and ``test_every_path_typed_field_of_the_run_configuration_is_known`` (R8).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clinfl.config import SecAggConfig
from clinfl.errors import ProtocolViolation
from clinfl.federation.messages import TrainingReport
from clinfl.secagg.advertise import GraphReveal, make_advertisement
from clinfl.secagg.consistency import sign_survivors
from clinfl.secagg.graph import COMPLETE_GRAPH_LIMIT
from clinfl.secagg.messages import MaskedInput, SurvivorSignature
from clinfl.secagg.settings import RoundParameters, SecAggRequirements, plan_round
from clinfl.secagg.site_session import SiteSession
from clinfl.secagg.stages import Stage
from clinfl.secagg.transcript import digest
from coordinator.secure_aggregation import SecureAggregator
from site_agent.agent import SiteAgent, SiteIdentity
from site_agent.ledger import SiteLedger
from tests.support.adversary import Adversary, ColluderState
from tests.support.federation import SETTINGS, FixedTrainer
from tests.support.recording import RecordingParticipant
from tests.support.secagg_round import CONFIG_HASH, Federation

POLICY = SecAggRequirements(min_sites=3, max_colluders=1)
SPARSE_SITES = COMPLETE_GRAPH_LIMIT + 1


def _round(
    n: int, *, policy: SecAggRequirements = POLICY, vector_length: int = 4, round_id: int = 1
) -> tuple[Federation, RoundParameters]:
    federation = Federation.of(n)
    params = plan_round(
        run_id="run",
        round_id=round_id,
        site_ids=federation.site_ids,
        vector_length=vector_length,
        min_sites=policy.min_sites,
        max_colluders=policy.max_colluders,
    )
    return federation, params


def _adversary(
    n: int, *, policy: SecAggRequirements = POLICY, vector_length: int = 4, **options: object
) -> Adversary:
    federation, params = _round(n, policy=policy, vector_length=vector_length)
    return Adversary(federation, params, policy, **options)  # type: ignore[arg-type]


def _audited(adversary: Adversary, site: str, needle: str) -> bool:
    return any(s == site and needle in message for s, message in adversary.audit)


def _check_refusals_are_audited(adversary: Adversary) -> None:
    """Every refusal the coordinator saw is in the refusing site's own audit log."""
    for site, message in adversary.refusals.items():
        assert _audited(adversary, site, message), (site, message)


# The harness itself -----------------------------------------------------------------------------
def test_harness_computes_an_allowed_sum_exactly_from_what_an_honest_round_reveals() -> None:
    adversary = _adversary(6)
    dropped = adversary.sites[5]  # masked against, then dropped: its mask key is revealed
    survivors = frozenset(adversary.sites[:5])
    adversary.advertise()
    adversary.graph()
    adversary.share()
    adversary.masked_inputs()
    del adversary.masked[dropped]
    adversary.sign_and_reveal({s: survivors for s in survivors})
    assert adversary.refusals == {}
    assert adversary.recover().candidates == {}  # nothing below min_sites
    everything = adversary.recover(below=len(adversary.sites))
    assert everything.leaks(adversary.inputs) == [survivors]
    assert dropped in everything.mask_keys


def test_harness_recovers_a_victim_whose_secrets_are_handed_over() -> None:
    adversary = _adversary(5)
    victim = adversary.sites[0]
    adversary.advertise()
    adversary.graph()
    adversary.share()
    adversary.masked_inputs()
    assert adversary.recover().candidates == {}
    session = adversary.sessions[victim]
    adversary.colluder_state[victim] = ColluderState(
        mask_key=session._mask_key, self_seed=session._self_seed
    )  # the victim stays honest otherwise: its input is still a secret to find
    assert adversary.recover().leaks(adversary.inputs) == [frozenset({victim})]


class SkipsR4(SiteSession):
    """The version-1 flow: signs any survivor set, without checking whom it masked with."""

    def sign_survivors(self, survivors: frozenset[str]) -> SurvivorSignature:
        self._advance(Stage.CONSISTENCY)
        self._signed_survivors = survivors
        return sign_survivors(
            site_id=self.site_id,
            transcript=self.transcript,
            survivors=survivors,
            signing_key=self._signing_key,
        )


NO_COLLUDERS = SecAggRequirements(min_sites=3, max_colluders=0)


def _selective_routing(
    adversary: Adversary, victim: str, partners: frozenset[str]
) -> frozenset[str]:
    """Attack 1: the victim gets shares only from ``partners``; U3 = the victim and the rest."""
    adversary.advertise()
    adversary.graph()
    adversary.share()
    inbox = {s: adversary.addressed_to(s) for s in adversary.sites}
    inbox[victim] = adversary.addressed_to(victim, senders=partners)
    adversary.masked_inputs(inbox)
    survivors = frozenset(adversary.sites) - (partners - adversary.colluders)
    adversary.sign_and_reveal({s: survivors for s in survivors})
    return survivors


def test_harness_recovers_selective_routing_when_r4_is_bypassed() -> None:
    """Without R4 and with c = 0 (t = 3 of 5), attack 1 yields the victim's exact input."""
    federation, params = _round(5, policy=NO_COLLUDERS)
    victim = params.site_ids[0]
    adversary = Adversary(federation, params, NO_COLLUDERS, session_factory={victim: SkipsR4})
    partners = frozenset(params.site_ids[1 : params.threshold])
    _selective_routing(adversary, victim, partners)
    assert adversary.refusals == {}
    assert adversary.recover().leaks(adversary.inputs) == [frozenset({victim})]


# Attack 1: selective share routing ---------------------------------------------------------------
def test_attack1_selective_routing_without_colluders_is_refused_by_r4() -> None:
    """The same attack against honest sites (c = 0, complete graph of 5): the victim refuses."""
    federation, params = _round(5, policy=NO_COLLUDERS)
    victim = params.site_ids[0]
    adversary = Adversary(federation, params, NO_COLLUDERS)
    _selective_routing(adversary, victim, frozenset(params.site_ids[1 : params.threshold]))
    assert _audited(adversary, victim, "never received shares from or masked with")
    assert any("too few signatures" in m for m in adversary.refusals.values())
    _check_refusals_are_audited(adversary)
    adversary.assert_nothing_recovered()


def test_attack1_selective_routing_on_the_complete_graph_every_survivor_set() -> None:
    """5 sites, c = 1: the victim masks with t - 1 sites; every U3 with the victim is tried."""
    sites = Federation.of(5).site_ids
    others = sites[1:]
    for size in range(len(others) + 1):
        for chosen in itertools.combinations(others, size):
            federation, params = _round(5)
            adversary = Adversary(federation, params, POLICY)
            victim = params.site_ids[0]
            partners = frozenset(params.site_ids[1 : params.threshold])
            survivors = frozenset({victim, *chosen})
            adversary.advertise()
            adversary.graph()
            adversary.share()
            inbox = {s: adversary.addressed_to(s) for s in adversary.sites}
            inbox[victim] = adversary.addressed_to(victim, senders=partners)
            adversary.masked_inputs(inbox)
            adversary.sign_and_reveal({s: survivors for s in survivors})
            if not survivors - {victim} <= partners:
                assert _audited(adversary, victim, "never received shares from or masked with")
            _check_refusals_are_audited(adversary)
            adversary.assert_nothing_recovered()


def test_attack1_selective_routing_on_the_sparse_graph() -> None:
    """65 sites (sparse graph): the victim masks with t - 1 of its neighbours only."""
    adversary = _adversary(SPARSE_SITES, vector_length=2)
    victim = adversary.sites[0]
    adversary.advertise()
    adversary.graph()
    adversary.share()
    neighbours = sorted(adversary.sessions[victim].neighbours)
    assert len(neighbours) < SPARSE_SITES - 1  # really sparse
    partners = frozenset(neighbours[: adversary.params.threshold - 1])
    inbox = {s: adversary.addressed_to(s) for s in adversary.sites}
    inbox[victim] = adversary.addressed_to(victim, senders=partners)
    adversary.masked_inputs(inbox)
    survivors = frozenset(adversary.sites) - partners
    adversary.sign_and_reveal({s: survivors for s in survivors})
    assert _audited(adversary, victim, "never received shares from or masked with")
    holders = set(neighbours) - partners
    assert holders and all(
        "too few signatures" in adversary.refusals.get(s, "") for s in holders
    ), "every holder of the victim's shares must refuse to reveal"
    _check_refusals_are_audited(adversary)
    adversary.assert_nothing_recovered()


# Attack 2: split survivor sets with one colluder -------------------------------------------------
def test_attack2_split_survivor_sets_with_one_colluder() -> None:
    """7 sites, t = 5, one colluder signing both stories; every split of the honest sites."""
    sites = Federation.of(7).site_ids
    victim, colluder = sites[0], sites[6]
    middle = sites[1:6]
    for size in range(len(middle)):  # the other story always has someone
        for with_victim in itertools.combinations(middle, size):
            federation, params = _round(7)
            adversary = Adversary(federation, params, POLICY, colluders=frozenset({colluder}))
            everyone = frozenset(params.site_ids)
            told = {s: everyone for s in (victim, *with_victim)}
            told |= {s: everyone - {victim} for s in middle if s not in with_victim}
            adversary.consistent_round(told)
            story_a = [s for s in told if victim in told[s]]
            story_b = [s for s in told if victim not in told[s]]
            assert not (
                all(s not in adversary.refusals for s in story_a)
                and all(s not in adversary.refusals for s in story_b)
            ), "both stories cannot gather t signatures"
            assert any("too few signatures" in m for m in adversary.refusals.values())
            _check_refusals_are_audited(adversary)
            adversary.assert_nothing_recovered()


def test_attack2_split_with_the_victim_masking_only_with_its_own_story() -> None:
    """The victim masks with its story's sites and the colluder; the other story drops them."""
    federation, params = _round(7)
    victim, colluder = params.site_ids[0], params.site_ids[6]
    story_a = frozenset(params.site_ids[:4]) | {colluder}
    story_b = frozenset(params.site_ids) - {victim}
    adversary = Adversary(federation, params, POLICY, colluders=frozenset({colluder}))
    adversary.advertise()
    adversary.graph()
    adversary.share()
    inbox = {s: adversary.addressed_to(s) for s in adversary.sites}
    inbox[victim] = adversary.addressed_to(victim, senders=story_a - {victim})
    adversary.masked_inputs(inbox)
    told = {s: story_a for s in story_a} | {s: story_b for s in story_b - story_a}
    adversary.sign_and_reveal(told)
    assert any("too few signatures" in m for m in adversary.refusals.values())
    _check_refusals_are_audited(adversary)
    adversary.assert_nothing_recovered()


# Attack 3: grinding the neighbour graph ----------------------------------------------------------
def test_attack3_complete_graph_is_the_same_for_every_round_id_and_seed() -> None:
    federation = Federation.of(COMPLETE_GRAPH_LIMIT)
    for round_id in range(1, 200):
        params = plan_round(
            round_id=round_id, site_ids=federation.site_ids, vector_length=1, degree=2
        )
        seed = hashlib.sha256(str(round_id).encode()).digest()
        graph = params.neighbours(params.site_ids, seed=seed)
        assert all(graph[s] == frozenset(params.site_ids) - {s} for s in params.site_ids)


def _fixed_randomness(salt: bytes) -> Callable[[str], Callable[[int], bytes]]:
    def for_site(site: str) -> Callable[[int], bytes]:
        counter = itertools.count()

        def random_bytes(size: int) -> bytes:
            block = hashlib.sha256(salt + site.encode() + str(next(counter)).encode()).digest()
            return block[:size]

        return random_bytes

    return for_site


def _sparse_neighbours(
    federation: Federation, *, round_id: int, salts: dict[str, bytes]
) -> dict[str, frozenset[str]]:
    params = plan_round(
        run_id="run", round_id=round_id, site_ids=federation.site_ids, vector_length=1
    )
    randomness = {s: _fixed_randomness(salts.get(s, b"same"))(s) for s in params.site_ids}
    adversary = Adversary(federation, params, POLICY, random_bytes_for=randomness)
    adversary.advertise()
    adversary.graph()
    adversary.share()
    assert adversary.refusals == {}
    return {s: adversary.sessions[s].neighbours for s in params.site_ids}


def test_attack3_sparse_graph_depends_on_committed_nonces_not_on_the_round_id() -> None:
    """Grinding round ids gives one graph; one site's fresh nonce gives another."""
    federation = Federation.of(SPARSE_SITES)
    first = _sparse_neighbours(federation, round_id=1, salts={})
    assert len(first[federation.site_ids[0]]) < SPARSE_SITES - 1
    assert _sparse_neighbours(federation, round_id=2, salts={}) == first
    changed = _sparse_neighbours(federation, round_id=1, salts={federation.site_ids[7]: b"new"})
    assert changed != first


def test_attack3_a_withheld_graph_reveal_aborts_the_sparse_round() -> None:
    adversary = _adversary(SPARSE_SITES, vector_length=1)
    adversary.advertise()
    reveals = adversary.graph()
    withheld = adversary.sites[3]
    shown = {s: [r for r in reveals.values() if r.site_id != withheld] for s in adversary.sites}
    sealed = adversary.share(shown)
    assert sealed == {} and adversary.sealed == []
    for site in adversary.sites:
        assert _audited(adversary, site, f"no valid reveal from {withheld}")
    adversary.assert_nothing_recovered()


def test_attack3_a_colluder_cannot_change_its_nonce_after_committing() -> None:
    adversary = _adversary(SPARSE_SITES, vector_length=1, colluders=frozenset({"site-05"}))
    adversary.advertise()
    reveals = adversary.graph()
    honest_reveal = reveals["site-05"]
    ground = GraphReveal("site-05", honest_reveal.round_id, bytes(32))
    shown = {
        s: [ground if r.site_id == "site-05" else r for r in reveals.values()]
        for s in adversary.honest
    }
    assert adversary.share(shown) == {}
    for site in adversary.honest:
        assert _audited(adversary, site, "site-05: reveal does not open its commitment")


def test_attack3_the_coordinator_cannot_query_a_nonce_twice() -> None:
    """A site opens its commitment once, after it has seen every commitment; never again."""
    adversary = _adversary(5)
    adverts = adversary.advertise()
    site = adversary.sites[0]
    first = adversary.sessions[site].reveal_graph_nonce(tuple(adverts.values()))
    assert first.nonce not in adverts[site].graph_commitment
    fewer = tuple(a for a in adverts.values() if a.site_id != adversary.sites[1])
    with pytest.raises(ProtocolViolation, match="GRAPH requested after GRAPH"):
        adversary.sessions[site].reveal_graph_nonce(fewer)
    assert adversary.sessions[site].aborted


# Attack 4: model and settings inconsistency --------------------------------------------------------
def _refused_before_any_share(adversary: Adversary, needle: str) -> None:
    adversary.advertise()
    adversary.graph()
    adversary.share()
    assert adversary.sealed == []
    for site in adversary.sites:
        assert site in adversary.refusals
        assert _audited(adversary, site, needle), site
    adversary.assert_nothing_recovered()


def test_attack4_another_global_model_for_one_site_is_refused_before_any_share() -> None:
    federation, params = _round(5)
    model_for = {params.site_ids[2]: digest(b"a model that zeroes the others' updates")}
    _refused_before_any_share(
        Adversary(federation, params, POLICY, model_for=model_for), "bound to another model_hash"
    )


@pytest.mark.parametrize(
    "change",
    [{"clip": 0.25}, {"scale": 1.0}, {"vector_length": 5}, {"loss_scale": 2.0}, {"degree": 2}],
)
def test_attack4_other_parameters_for_one_site_are_refused_before_any_share(
    change: dict[str, object],
) -> None:
    federation, params = _round(5)
    other = replace(params, **change)  # type: ignore[arg-type]
    _refused_before_any_share(
        Adversary(federation, params, POLICY, params_for={params.site_ids[1]: other}),
        "bound to another params_hash",
    )


TEMPLATE = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}


def _audit_into(log: list[tuple[str, str]], site: str) -> Callable[[int, str], None]:
    def hook(round_id: int, message: str) -> None:
        log.append((site, message))

    return hook


def _agents(
    n: int,
    *,
    report: bool = False,
    samples: tuple[int, ...] | None = None,
    audit: list[tuple[str, str]] | None = None,
    run_id: str = "run",
    **options: object,
) -> list[SiteAgent]:
    ids = [f"site-{k}" for k in range(n)]
    identities = [SiteIdentity(s, Ed25519PrivateKey.generate()) for s in ids]
    directory = {i.site_id: i.signing_key.public_key() for i in identities}
    counts = samples or tuple(10 * (k + 1) for k in range(n))
    agents = []
    for k, identity in enumerate(identities):
        delta = {name: torch.full_like(value, 0.01 * (k + 1)) for name, value in TEMPLATE.items()}
        log = audit if audit is not None else []
        agents.append(
            SiteAgent(
                FixedTrainer(identity.site_id, delta, counts[k]),
                identity=identity,
                directory=directory,
                audit=_audit_into(log, identity.site_id),
                report_loss=report,
                report_counts=report,
                run_id=run_id,
                **{"requirements": POLICY, "config_hash": CONFIG_HASH, **options},  # type: ignore[arg-type]
            )
        )
    return agents


def test_attack4_site_agents_refuse_another_model_or_other_settings() -> None:
    audit: list[tuple[str, str]] = []
    agents = _agents(5, audit=audit)
    params = plan_round(
        run_id="run", round_id=1, site_ids=tuple(a.site_id for a in agents), vector_length=8
    )
    crafted = {name: value + 1e-3 for name, value in TEMPLATE.items()}
    agents[0].train_round(crafted, SETTINGS)
    agents[1].train_round(TEMPLATE, replace(SETTINGS, lr=1.0))
    for agent in agents[2:]:
        agent.train_round(TEMPLATE, SETTINGS)
    adverts = tuple(agent.secagg_advertise(params) for agent in agents)
    for agent in agents:
        with pytest.raises(ProtocolViolation, match="advertisement check failed"):
            agent.secagg_graph(adverts)
    reasons = dict(audit)
    assert "site-0: bound to another model_hash" in reasons["site-2"]
    assert "site-1: bound to another params_hash" in reasons["site-2"]


# Attack 5: metadata ------------------------------------------------------------------------------
def test_attack5_training_report_carries_no_loss_steps_or_sample_count() -> None:
    assert {f.name for f in dataclasses.fields(TrainingReport)} == {"site_id", "epsilon_spent"}
    agent = _agents(3, report=True)[0]
    report = agent.train_round(TEMPLATE, SETTINGS)
    assert report == TrainingReport(agent.site_id, None)


@pytest.mark.parametrize("report", [True, False])
def test_attack5_loss_and_weight_leave_only_as_federation_wide_sums(report: bool) -> None:
    samples = (13, 7, 120, 40, 5)
    agents = _agents(5, report=report, samples=samples)
    wires = [RecordingParticipant(agent) for agent in agents]
    for wire in wires:
        wire.train_round(TEMPLATE, SETTINGS)
    result = SecureAggregator(SecAggConfig(), run_id="run").aggregate(
        wires, round_id=SETTINGS.round, template=TEMPLATE
    )
    if report:
        assert result.num_samples == sum(samples)
        assert result.mean_loss == pytest.approx(0.5, abs=1e-3)  # FixedTrainer's loss
    else:
        assert result.num_samples == len(samples)  # weight 1 each: no count left the site
        assert result.mean_loss is None
    for wire, count in zip(wires, samples, strict=True):
        for stage, payload in wire.to_coordinator:
            if stage == "train":
                assert payload == TrainingReport(wire.site_id, None)
            if stage == "masked-input":
                assert isinstance(payload, MaskedInput)
                n = payload.vector.shape[0] - 3
                assert int(payload.vector[n]) != (count if report else 1) or count == 1


def test_attack5_plain_upload_without_reporting_sends_neither_count_nor_loss() -> None:
    relaxed = SecAggRequirements(required=False)
    agent = _agents(1, report=False)[0]
    agent._requirements = relaxed
    agent.train_round(TEMPLATE, SETTINGS)
    contribution = agent.upload_plain()
    assert contribution.weight == 1
    assert contribution.mean_loss is None


# Attack 7: loose ends ----------------------------------------------------------------------------
def test_attack7_survivor_signatures_from_an_earlier_session_are_refused() -> None:
    """A site that joins again sees the same round id; the old signatures cover another transcript."""
    federation, params = _round(5)
    old = Adversary(federation, params, POLICY)
    old.consistent_round({s: frozenset(params.site_ids) for s in params.site_ids})
    assert old.refusals == {}
    stale = [s for s in old.signatures]
    new = Adversary(federation, params, POLICY)
    new.advertise()
    new.graph()
    new.share()
    new.masked_inputs()
    survivors = frozenset(params.site_ids)
    new.sign({s: survivors for s in params.site_ids})
    new.reveal({s: new.request_for(s, stale, survivors=survivors) for s in params.site_ids})
    assert new.revealed == []
    for site in params.site_ids:
        assert _audited(new, site, "signed a different transcript or survivor set")
    new.assert_nothing_recovered()


def test_attack7_replayed_round_id_is_refused_even_after_a_restart(tmp_path: Path) -> None:
    """R2: a completed round can never be taken again, not even after a restart and a new
    join; an uncompleted one may be retried (a coordinator that crashed mid-round)."""
    audit: list[tuple[str, str]] = []
    plain = SecAggRequirements(required=False, min_sites=2)

    def agent_with(ledger: SiteLedger) -> SiteAgent:
        return _agents(1, audit=audit, run_id="run-a", round_store=ledger, requirements=plain)[0]

    ledger = SiteLedger(tmp_path / "state")
    agent = agent_with(ledger)
    agent.train_round(TEMPLATE, replace(SETTINGS, round=1))
    agent.train_round(TEMPLATE, replace(SETTINGS, round=1))  # a retry: nothing was sent yet
    agent.upload_plain()  # the site completes round 1
    with pytest.raises(ProtocolViolation, match="replayed or repeated round"):
        agent.train_round(TEMPLATE, replace(SETTINGS, round=1))
    ledger.close()

    restarted_ledger = SiteLedger(tmp_path / "state")  # a restart, then a new join of the run
    restarted = agent_with(restarted_ledger)

    def model(round_id: int) -> dict[str, torch.Tensor]:  # each completed round moves the model
        return {name: value + round_id for name, value in TEMPLATE.items()}

    for replayed in (1, 0):
        with pytest.raises(ProtocolViolation):
            restarted.train_round(model(replayed), replace(SETTINGS, round=replayed))
    restarted.train_round(model(2), replace(SETTINGS, round=2))
    restarted.upload_plain()
    with pytest.raises(ProtocolViolation, match="replayed or repeated round"):
        restarted.train_round(model(2), replace(SETTINGS, round=2))
    with pytest.raises(ProtocolViolation, match="rounds skipped"):
        restarted.train_round(model(5), replace(SETTINGS, round=5))
    with pytest.raises(ProtocolViolation, match="replayed or repeated round"):  # not a "retry"
        restarted.train_round(model(5), replace(SETTINGS, round=5))
    restarted.train_round(model(6), replace(SETTINGS, round=6))  # resynchronised after the skip
    restarted_ledger.close()
    assert sum("replayed or repeated round" in message for _, message in audit) == 4


@pytest.mark.parametrize(("field", "stage"), [("mask_key", "masked_input"), ("share_key", "share")])
def test_attack7_low_order_key_from_a_colluder_fails_closed(field: str, stage: str) -> None:
    colluder = "site-04"
    adversary = _adversary(5, colluders=frozenset({colluder}))
    adverts = adversary.advertise()
    honest_advert = adverts[colluder]
    keys_ = {"share_key": honest_advert.share_key, "mask_key": honest_advert.mask_key}
    keys_[field] = bytes(32)  # a low-order point: X25519 with it has no secret
    forged = make_advertisement(
        site_id=colluder,
        binding=honest_advert.binding,
        signing_key=adversary.federation.signing_keys[colluder],
        commitment=honest_advert.graph_commitment,
        **keys_,
    )
    adversary.add_advert(forged)
    adversary.sessions[colluder]._adverts[colluder] = forged  # the colluder plays along
    adversary.graph()
    adversary.share()
    adversary.masked_inputs()
    for site in adversary.honest:
        assert _audited(adversary, site, f"malformed input at {stage} (ValueError)"), site
        session = adversary.sessions[site]
        assert session.aborted
        assert session._self_seed is None and session._mask_key is None
        assert session._share_key is None and session._held == {}
    assert not set(adversary.masked) & set(adversary.honest)
    adversary.assert_nothing_recovered()


@pytest.mark.parametrize("clip", [float("inf"), float("-inf")])
def test_attack7_infinite_clip_is_refused_and_audited(clip: float) -> None:
    federation, params = _round(5)
    bad = replace(params, clip=clip)
    adversary = Adversary(federation, bad, POLICY)
    assert set(adversary.refusals) == set(bad.site_ids)
    for site in bad.site_ids:
        assert _audited(adversary, site, "clip must be finite and positive")
    audit: list[tuple[str, str]] = []
    agent = _agents(5, audit=audit, run_id="run")[0]
    agent.train_round(TEMPLATE, SETTINGS)
    with pytest.raises(ProtocolViolation):
        agent.secagg_advertise(replace(bad, vector_length=8))
    assert any("clip must be finite and positive" in message for _, message in audit)


def test_attack7_nan_parameters_are_a_protocol_violation_at_the_agent() -> None:
    audit: list[tuple[str, str]] = []
    agent = _agents(5, audit=audit, run_id="run")[0]
    agent.train_round(TEMPLATE, SETTINGS)
    _, params = _round(5, vector_length=8)
    with pytest.raises(ProtocolViolation):
        agent.secagg_advertise(replace(params, clip=float("nan")))
    assert any("malformed parameters" in message for _, message in audit)


# A random adversary -----------------------------------------------------------------------------
def _few(sites: tuple[str, ...], most: int) -> st.SearchStrategy[frozenset[str]]:
    """Usually nobody; otherwise up to ``most`` of ``sites``."""
    return st.one_of(st.just(frozenset()), st.frozensets(st.sampled_from(sites), max_size=most))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_adversary_never_computes_an_honest_input_or_a_small_sum(
    data: st.DataObject,
) -> None:
    """Random drops, views, routing, survivor stories and colluders, invariant on every example.

    On top of random choices, half the examples aim at one victim as attacks 1 and 2 do: it is
    sent only ``t - 1`` senders' shares, and some sites are told a survivor set without it.
    """
    n = data.draw(st.integers(4, 8), label="sites")
    c = data.draw(st.integers(1, 2 if n >= 6 else 1), label="max colluders")
    min_sites = data.draw(st.integers(2, 3), label="min sites")
    policy = SecAggRequirements(min_sites=min_sites, max_colluders=c)
    federation, params = _round(n, policy=policy, vector_length=2)
    sites = params.site_ids
    colluders = data.draw(st.frozensets(st.sampled_from(sites), max_size=c), label="colluders")
    adversary = Adversary(federation, params, policy, colluders=colluders)
    honest = adversary.honest
    victim = data.draw(st.sampled_from(honest), label="victim")
    aimed = data.draw(st.booleans(), label="aimed at the victim")
    kinds = ["drops", "views", "reveals", "routing", "stories"]
    perturbed = data.draw(st.frozensets(st.sampled_from(kinds), max_size=3), label="perturbed")

    def few(kind: str, most: int) -> frozenset[str]:
        return data.draw(_few(sites, most), label=kind) if kind in perturbed else frozenset()

    gone = few("drops", 1)
    adversary.advertise([s for s in sites if s not in gone])
    latest = {s: ads[-1] for s, ads in adversary.adverts.items()}
    views: dict[str, frozenset[str]] = {}  # whom the coordinator shows each site
    for site in latest:
        hidden = few("views", 2) - {site} if site in honest else set()
        views[site] = frozenset(latest) - hidden
    reveals = adversary.graph({s: [latest[v] for v in sorted(views[s])] for s in views})
    shown_reveals = {}
    for site in reveals:
        withheld = few("reveals", 1) - {site}
        shown_reveals[site] = [
            r for s, r in reveals.items() if s in views[site] and s not in withheld
        ]
    adversary.share(shown_reveals)
    opened = {s: frozenset(r.site_id for r in shown) for s, shown in shown_reveals.items()}
    senders = sorted({item.sender for item in adversary.sealed})
    partners = frozenset(
        data.draw(st.permutations([s for s in senders if s != victim]), label="partners")[
            : params.threshold - 1
        ]
    )
    inbox = {}
    for site in senders:
        blocked = few("routing", 2) if site in honest else set()
        if aimed and site == victim:
            blocked = set(sites) - partners
        inbox[site] = [
            i
            for i in adversary.addressed_to(site)
            if i.sender not in blocked and i.sender in opened[site]
        ]
    adversary.masked_inputs(inbox)
    worlds = data.draw(st.integers(1, 3), label="survivor stories")
    stories = [frozenset(sites) - few("stories", n // 2) for _ in range(worlds)]
    if aimed:
        stories[0] = frozenset(sites) - (partners - colluders)
    told = {
        s: stories[data.draw(st.integers(0, worlds - 1), label="story told")] | {s}
        for s in honest
        if s in adversary.masked
    }
    adversary.sign_and_reveal(told)
    revealed = {r.site_id for r in adversary.revealed}
    event(f"{'some' if revealed else 'no'} shares revealed, {len(set(told.values()))} stories")
    _check_refusals_are_audited(adversary)
    recovery = adversary.assert_nothing_recovered()
    event(f"{len(set(recovery.self_seeds) - colluders)} honest self-mask seeds reconstructed")
