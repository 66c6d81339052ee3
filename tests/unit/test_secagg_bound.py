"""The coordinator's secure-aggregation settings: one rule for both modes (known answers)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from clinfl import __version__
from clinfl.config import SecAggConfig
from clinfl.config.policy import parse_policy
from clinfl.config.secagg_bound import check_roster_size, coordinator_secagg
from clinfl.errors import ConfigError, WireError
from clinfl.secagg.settings import SecAggTerms
from clinfl.transport.contract import JoinReply
from clinfl.transport.wire import decode, encode

RUN = SecAggConfig(min_sites=2, max_colluders=1, weight_cap=10_000, bits=40, clip=0.25)


def test_the_settings_rise_to_the_strictest_site_and_keep_the_rest() -> None:
    declared = {
        "a": SecAggTerms(min_sites=2, max_colluders=0, max_weight=10_000),
        "b": SecAggTerms(min_sites=3, max_colluders=2, max_weight=500),
        "c": SecAggTerms(min_sites=2, max_colluders=1, max_weight=800),
        "d": SecAggTerms(min_sites=2, max_colluders=1, max_weight=10_000),
        "e": SecAggTerms(min_sites=2, max_colluders=1, max_weight=10_000),
    }
    resolved = coordinator_secagg(RUN, declared)
    assert resolved == replace(RUN, min_sites=3, max_colluders=2, weight_cap=500)
    assert (resolved.bits, resolved.clip) == (40, 0.25)


def test_a_looser_site_never_lowers_the_run_configuration() -> None:
    loose = SecAggTerms(min_sites=2, max_colluders=0, max_weight=20_000)
    strict_run = SecAggConfig(min_sites=4, max_colluders=2, weight_cap=100)
    resolved = coordinator_secagg(strict_run, {f"s{k}": loose for k in range(6)})
    assert (resolved.min_sites, resolved.max_colluders, resolved.weight_cap) == (4, 2, 100)


def test_an_unset_min_sites_is_the_default_floor_and_no_declaration_keeps_the_config() -> None:
    resolved = coordinator_secagg(SecAggConfig(), {}, sites=4)
    assert (resolved.min_sites, resolved.max_colluders, resolved.weight_cap) == (3, 1, 10_000)


def test_too_few_sites_for_the_strictest_terms_are_refused_naming_who_raised_them() -> None:
    declared = {
        "site-1": SecAggTerms(2, 1, 10_000),
        "site-2": SecAggTerms(2, 2, 10_000),
        "site-3": SecAggTerms(2, 2, 10_000),
    }
    with pytest.raises(ConfigError) as caught:
        coordinator_secagg(RUN, declared)
    assert caught.value.message == (
        "the sites' policies require sums over at least 2 sites besides 2 possible colluder(s); "
        "the federation has 3 (max_colluders 2 from site-2, site-3)"
    )
    assert "either use at least 4 sites" in caught.value.remedy
    assert "'Small federations'" in caught.value.remedy
    coordinator_secagg(replace(RUN, enabled=False), declared)  # no sums, nothing to protect


def test_a_site_that_declared_nothing_still_counts() -> None:
    declared = {"site-1": SecAggTerms(2, 2, 10_000)}
    assert coordinator_secagg(RUN, declared, sites=4).max_colluders == 2
    with pytest.raises(ConfigError, match="the federation has 3"):
        coordinator_secagg(RUN, declared, sites=3)


def test_the_simulation_and_a_policy_file_give_the_same_terms() -> None:
    policy = parse_policy("[secagg]\nmin_sites = 4\nmax_colluders = 2\nmax_weight = 300\n")
    assert policy.secagg.terms == SecAggTerms(min_sites=4, max_colluders=2, max_weight=300)


@pytest.mark.parametrize(
    ("min_sites", "max_colluders", "max_weight"), [(1, 1, 10), (2, -1, 10), (2, 1, 0)]
)
def test_terms_out_of_a_policy_s_bounds_do_not_decode(
    min_sites: int, max_colluders: int, max_weight: int
) -> None:
    """A site that declares terms no policy allows (a weight cap of 0 would divide by zero in
    the coordinator's plan) sends a malformed join reply: it does not join."""
    with pytest.raises(ValueError):
        SecAggTerms(min_sites, max_colluders, max_weight)
    body = encode(JoinReply("site-1", __version__, None, SecAggTerms(2, 1, 10)))
    bad = body.replace(
        b'"min_sites":2,"max_colluders":1,"max_weight":10',
        f'"min_sites":{min_sites},"max_colluders":{max_colluders},"max_weight":{max_weight}'.encode(),
    )
    assert bad != body
    with pytest.raises(WireError):
        decode(bad, JoinReply)


def test_the_join_reply_carries_the_terms_and_an_old_reply_none() -> None:
    reply = JoinReply("site-1", __version__, None, SecAggTerms(3, 2, 50))
    assert decode(encode(reply), JoinReply) == reply
    old = b'{"site_id":"site-1","clinfl_version":"0.1","initial_state":null}'
    assert decode(old, JoinReply).secagg is None


ROSTER = Path("pki/roster.json")


@pytest.mark.parametrize(
    ("secagg", "sites", "refused"),
    [
        (SecAggConfig(min_sites=2, max_colluders=2), 3, True),
        (SecAggConfig(min_sites=2, max_colluders=2), 4, False),
        (SecAggConfig(), 3, True),  # the default floor 3 plus one colluder needs 4
        (SecAggConfig(), 1, True),
        (SecAggConfig(), 0, False),  # an empty roster is refused on its own
        (SecAggConfig(enabled=False), 1, False),
        (SecAggConfig(min_sites=1), 1, False),  # invalid: the validation names it
    ],
)
def test_a_roster_too_small_for_the_run_configuration_is_refused(
    secagg: SecAggConfig, sites: int, refused: bool
) -> None:
    if not refused:
        check_roster_size(secagg, sites, roster=ROSTER)
        return
    with pytest.raises(ConfigError) as caught:
        check_roster_size(secagg, sites, roster=ROSTER)
    need = secagg.sum_floor + secagg.max_colluders
    assert f"lists {sites} site(s)" in caught.value.message
    assert f"needs at least {need}" in caught.value.message
    assert caught.value.remedy.startswith("admit more sites with `clinfl pki admit")
