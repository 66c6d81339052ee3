"""R5's two halves, each attacked at n = 4 and played to the end (issue 28, part 6).

Both attacks run through :class:`tests.support.adversary.Adversary` with one colluder, and each
test checks the refusal and that the coordinator computes nothing from what it collected. Each
test also plays the same attack against sites with the rule taken out (monkeypatched away for
that test only) and asserts that the harness then *does* recover an honest input or a small
sum: so "nothing recovered" is a consequence of the rule, not of a weak attack. ``tools/mutation_check.py`` removes each rule from the source itself and checks
that these tests fail.

- Split-proof threshold (``t > (h + c) / 2``, :func:`~clinfl.secagg.settings.check_holders`):
  with 4 sites every site holds shares of every other (h = 4), so with c = 1 a threshold of 2
  is not split-proof. The coordinator tells one honest holder that the victim survived (it
  reveals the victim's self-mask share) and the other that it dropped (it reveals the victim's
  mask-key share); the colluder adds its own share of each, and with t = 2 both of the victim's
  secrets come out, so its masked vector opens to its exact input.
- Survivor floor (``|U3| >= min_sites + c``, :meth:`SecAggRequirements.survivor_floor`): with
  min_sites 3 and c = 1 a sum must cover 4 sites. The coordinator announces
  U3 = {two honest sites, the colluder} and declares the fourth site dropped: the unmasked sum
  minus the colluder's own input is the sum of two honest inputs, below min_sites.
"""

from __future__ import annotations

import pytest

from clinfl.secagg import site_session
from clinfl.secagg.settings import RoundParameters, SecAggRequirements, plan_round
from tests.support.adversary import Adversary
from tests.support.secagg_round import Federation

SITES = 4


def _round(
    policy: SecAggRequirements, *, threshold: int | None = None
) -> tuple[Federation, RoundParameters]:
    federation = Federation.of(SITES)
    params = plan_round(
        run_id="run",
        round_id=1,
        site_ids=federation.site_ids,
        vector_length=4,
        min_sites=policy.min_sites,
        max_colluders=policy.max_colluders,
        threshold=threshold,
    )
    return federation, params


def _audited(adversary: Adversary, site: str, needle: str) -> bool:
    return any(s == site and needle in message for s, message in adversary.audit)


def _check_refusals_are_audited(adversary: Adversary) -> None:
    for site, message in adversary.refusals.items():
        assert _audited(adversary, site, message), (site, message)


# R5: a split-proof threshold ---------------------------------------------------------------------
SPLIT_POLICY = SecAggRequirements(min_sites=2, max_colluders=1)
LOW_THRESHOLD = 2  # h = 4 holders, c = 1: split-proof needs t > 2.5


def _split_attack(adversary: Adversary) -> tuple[str, str, str, str]:
    """Tell one holder the victim survived and another that it dropped; the colluder signs both."""
    victim, holder_a, holder_b, colluder = adversary.sites
    assert colluder in adversary.colluders
    adversary.advertise()
    adversary.graph()
    adversary.share()
    adversary.masked_inputs()
    everyone = frozenset(adversary.sites)
    adversary.sign_and_reveal({holder_a: everyone, holder_b: everyone - {victim}})
    return victim, holder_a, holder_b, colluder


def _split_adversary() -> Adversary:
    federation, params = _round(SPLIT_POLICY, threshold=LOW_THRESHOLD)
    assert params.threshold == LOW_THRESHOLD
    return Adversary(federation, params, SPLIT_POLICY, colluders=frozenset({params.site_ids[-1]}))


def test_harness_recovers_the_victim_by_a_split_when_the_threshold_is_not_split_proof(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without R5's check, t = 2 of 4 and one colluder give the victim's exact input."""
    monkeypatch.setattr(site_session, "check_holders", lambda *args, **kwargs: None)
    adversary = _split_adversary()
    victim, *_ = _split_attack(adversary)
    assert adversary.refusals == {}
    assert adversary.recover().leaks(adversary.inputs) == [frozenset({victim})]


def test_a_threshold_that_is_not_split_proof_is_refused_before_any_share_at_n4() -> None:
    """t = 2 at 4 sites with c = 1 (t <= (h + c) / 2): every honest site refuses at the share
    stage, no share leaves it, and the split attack that follows recovers nothing."""
    adversary = _split_adversary()
    _split_attack(adversary)
    adversary.assert_nothing_recovered()
    for site in adversary.honest:
        assert site in adversary.refusals, f"{site} released shares under t = {LOW_THRESHOLD}"
        assert _audited(adversary, site, f"threshold {LOW_THRESHOLD} must be at least 3"), site
    assert not any(item.sender in adversary.honest for item in adversary.sealed)
    assert adversary.revealed == []
    _check_refusals_are_audited(adversary)


def test_every_split_proof_threshold_at_n4_survives_the_same_split() -> None:
    """The thresholds a site accepts at n = 4, c = 1 (3 and 4): the split is refused when
    shares are revealed, and nothing is recovered."""
    for threshold in (3, 4):
        federation, params = _round(SPLIT_POLICY, threshold=threshold)
        adversary = Adversary(
            federation, params, SPLIT_POLICY, colluders=frozenset({params.site_ids[-1]})
        )
        _split_attack(adversary)
        adversary.assert_nothing_recovered()
        assert any("too few signatures" in m for m in adversary.refusals.values()), threshold
        _check_refusals_are_audited(adversary)


# R5: the survivor floor ---------------------------------------------------------------------------
FLOOR_POLICY = SecAggRequirements(min_sites=3, max_colluders=1)


def _small_survivor_set(adversary: Adversary) -> tuple[frozenset[str], str]:
    """U3 = two honest sites and the colluder; the fourth site is declared dropped."""
    honest_a, honest_b, dropped, colluder = adversary.sites
    assert colluder in adversary.colluders
    adversary.advertise()
    adversary.graph()
    adversary.share()
    adversary.masked_inputs()
    survivors = frozenset({honest_a, honest_b, colluder})
    adversary.sign_and_reveal({honest_a: survivors, honest_b: survivors})
    return survivors, dropped


def _floor_adversary() -> Adversary:
    federation, params = _round(FLOOR_POLICY)
    assert params.threshold == 3  # split-proof for h = 4, c = 1, and min_sites
    return Adversary(federation, params, FLOOR_POLICY, colluders=frozenset({params.site_ids[-1]}))


def test_harness_recovers_a_two_site_sum_when_u3_is_below_min_sites_plus_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the floor, U3 of 3 (t = 3) with one colluder gives a sum of 2 honest inputs."""
    adversary = _floor_adversary()
    assert FLOOR_POLICY.survivor_floor(adversary.params.threshold) == SITES
    monkeypatch.setattr(SecAggRequirements, "survivor_floor", lambda self, threshold: threshold)
    survivors, _ = _small_survivor_set(adversary)
    assert adversary.refusals == {}
    honest_survivors = survivors - adversary.colluders
    assert adversary.recover().leaks(adversary.inputs) == [honest_survivors]


def test_a_survivor_set_below_min_sites_plus_c_is_refused_at_n4() -> None:
    """min_sites 3, c = 1, 4 sites, |U3| = 3: every site asked refuses to sign, no share is
    revealed, and no sum of fewer than min_sites honest inputs can be computed."""
    adversary = _floor_adversary()
    survivors, _ = _small_survivor_set(adversary)
    adversary.assert_nothing_recovered()
    for site in survivors - adversary.colluders:
        assert _audited(adversary, site, "3 survivors; this site requires at least 4"), site
    assert adversary.signatures == [] and adversary.revealed == []
    _check_refusals_are_audited(adversary)
