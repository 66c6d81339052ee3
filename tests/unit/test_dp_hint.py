"""`clinfl simulate` notes when DP-SGD would train from random weights."""

from __future__ import annotations

from pathlib import Path

from clinfl.cli.dp_hint import DP_FROM_SCRATCH_HINT, dp_from_scratch_hint
from clinfl.config import MethodConfig, PrivacyConfig, RunConfig

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_a_dp_policy_with_random_weights_gets_the_hint_and_the_recipe_does_not() -> None:
    dp = PrivacyConfig(policy=POLICIES / "default.toml")
    assert dp_from_scratch_hint(RunConfig(privacy=dp)) == DP_FROM_SCRATCH_HINT
    recipe = MethodConfig(name="fedavg", backbone="mobilenet_v2", train_blocks=0)
    assert dp_from_scratch_hint(RunConfig(method=recipe, privacy=dp)) is None
    scratch = MethodConfig(backbone="mobilenet_v2", pretrained=False)
    assert dp_from_scratch_hint(RunConfig(method=scratch, privacy=dp)) == DP_FROM_SCRATCH_HINT


def test_no_dp_no_hint() -> None:
    assert dp_from_scratch_hint(RunConfig()) is None  # no policy: research terms, no DP
    research = PrivacyConfig(policy=POLICIES / "research.toml")
    assert dp_from_scratch_hint(RunConfig(privacy=research)) is None
