"""Round settings outside a site's [training] bounds are refused, every one of them at once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from clinfl.config import FederationConfig
from clinfl.config.policy import TrainingBounds, load_policy
from clinfl.errors import PolicyViolation
from clinfl.federation.messages import RoundSettings
from clinfl.training_bounds import check_round_settings, round_settings_violations

POLICIES = Path(__file__).resolve().parents[2] / "policies"

BOUNDS = TrainingBounds(
    min_lr=1e-5, max_lr=1e-2, max_local_epochs=3, min_batch_size=8, max_batch_size=64
)


def test_settings_within_the_bounds_pass_including_the_edges() -> None:
    for settings in (
        RoundSettings(round=1, local_epochs=1, batch_size=8, lr=1e-5),
        RoundSettings(round=2, local_epochs=3, batch_size=64, lr=1e-2),
    ):
        check_round_settings(settings, bounds=BOUNDS, site_id="site-1")
        assert round_settings_violations(settings, bounds=BOUNDS) == []


def test_every_setting_outside_the_bounds_is_listed_with_value_and_fix() -> None:
    settings = RoundSettings(round=4, local_epochs=4, batch_size=1, lr=0.5)
    with pytest.raises(PolicyViolation) as caught:
        check_round_settings(settings, bounds=BOUNDS, site_id="site-2")
    message = caught.value.message
    assert message.startswith("site-2 refuses round 4's settings: ")
    assert "lr=0.5 is invalid: allowed 1e-05..0.01" in message
    assert "local_epochs=4 is invalid: allowed 1..3 (training.max_local_epochs)" in message
    assert "batch_size=1 is invalid: allowed 8..64" in message
    assert "[training]" in caught.value.remedy and caught.value.exit_code == 8


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (RoundSettings(1, 1, 8, 1e-6), "lr"),
        (RoundSettings(1, 1, 8, math.nan), "lr"),
        (RoundSettings(1, 0, 8, 1e-3), "local_epochs"),
        (RoundSettings(1, 1, 65, 1e-3), "batch_size"),
    ],
)
def test_each_bound_is_enforced_on_its_own(settings: RoundSettings, field: str) -> None:
    assert [v.field for v in round_settings_violations(settings, bounds=BOUNDS)] == [field]


def test_the_defaults_and_shipped_policies_admit_the_projects_own_settings() -> None:
    """The demo's defaults and the tests' deployments (batch 16, 32) must still train."""
    ours = [RoundSettings.for_round(FederationConfig(), 1)]
    ours += [RoundSettings(1, 1, batch, 1e-3) for batch in (8, 16, 32)]
    for policy in ("default.toml", "research.toml"):
        bounds = load_policy(POLICIES / policy).training
        for settings in ours:
            check_round_settings(settings, bounds=bounds, site_id="site-1")
    strict = load_policy(POLICIES / "strict.toml").training
    check_round_settings(ours[0], bounds=strict, site_id="site-1")
