"""Policy files: the shipped ones load, every violation is listed, requests may only tighten."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinfl.config.policy import (
    METRIC_DISCLOSURE,
    METRICS,
    NO_DP_WARNING,
    PrivacyRequest,
    TrainingBounds,
    apply_request,
    load_policy,
    parse_policy,
    policy_warnings,
)
from clinfl.errors import ConfigError, PolicyViolation, ValidationError

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_shipped_policies_load_with_the_documented_terms() -> None:
    default = load_policy(POLICIES / "default.toml")
    strict = load_policy(POLICIES / "strict.toml")
    research = load_policy(POLICIES / "research.toml")
    assert default.dp.required and default.dp.epsilon_budget == 8.0 and default.dp.delta == 1e-5
    assert default.secagg.required
    assert strict.dp.epsilon_budget == 3.0 and strict.secagg.min_sites > default.secagg.min_sites
    assert not research.dp.required and research.secagg.required
    assert len({default.sha256, strict.sha256, research.sha256}) == 3
    assert default.secagg.max_colluders == research.secagg.max_colluders == 1
    assert strict.secagg.max_colluders == 2 and strict.secagg_requirements.max_colluders == 2
    assert default.training == research.training == TrainingBounds()
    assert strict.training.max_lr < default.training.max_lr
    assert strict.training.max_local_epochs < default.training.max_local_epochs
    assert strict.training.min_batch_size > default.training.min_batch_size > 1
    for path in POLICIES.glob("*.toml"):  # commented: a comment above each setting or group
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if "=" in line and not line.startswith("#"):
                above = lines[max(0, index - 6) : index]
                assert any(prev.startswith("#") for prev in above), f"{path.name}: {line}"


def test_every_violation_is_listed_with_field_value_and_fix() -> None:
    text = """
[dp]
required = "yes"
epsilon_budget = -1
delta = 2.0
noise_multiplier = 1.0
target_epsilon_per_round = 0.5
accountant = "moments"
epsilon = 3

[secagg]
min_sites = 1

[reporting]
metrics = ["loss", "images"]

[extra]
x = 1
"""
    with pytest.raises(ValidationError) as caught:
        parse_policy(text, source="bad.toml")
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "dp.required",
        "dp.epsilon_budget",
        "dp.delta",
        "dp.noise_multiplier",
        "dp.accountant",
        "dp.epsilon",
        "secagg.min_sites",
        "reporting.metrics",
        "extra",
    }
    message = caught.value.message
    assert "dp.epsilon_budget=-1 is invalid: allowed > 0" in message
    assert "reporting.metrics=['images']" in message


def test_max_colluders_defaults_to_one_and_reaches_the_protocol() -> None:
    assert parse_policy("").secagg_requirements.max_colluders == 1
    policy = parse_policy("[secagg]\nmax_colluders = 0\n")
    assert policy.secagg.max_colluders == 0 and policy.secagg_requirements.max_colluders == 0
    for bad in ("-1", "1.5", "true", '"2"'):
        with pytest.raises(ValidationError) as caught:
            parse_policy(f"[secagg]\nmax_colluders = {bad}\n")
        assert [v.field for v in caught.value.violations] == ["secagg.max_colluders"]


def test_training_bounds_are_read_and_every_violation_is_listed() -> None:
    policy = parse_policy(
        "[training]\nmin_lr = 1\nmax_lr = 2\nmax_local_epochs = 3\n"
        "min_batch_size = 4\nmax_batch_size = 4\nmax_local_steps = 50\n"
    )
    assert policy.training == TrainingBounds(1.0, 2.0, 3, 4, 4, max_local_steps=50)
    assert isinstance(policy.training.min_lr, float)
    text = """
[training]
min_lr = 0
max_lr = inf
max_local_epochs = 0
min_batch_size = 0
max_batch_size = "many"
max_local_steps = 0
epochs = 3
"""
    with pytest.raises(ValidationError) as caught:
        parse_policy(text, source="bad.toml")
    fields = [v.field for v in caught.value.violations]
    assert sorted(fields) == [
        "training.epochs",
        "training.max_batch_size",
        "training.max_local_epochs",
        "training.max_local_steps",
        "training.max_lr",
        "training.min_batch_size",
        "training.min_lr",
    ]
    assert "training.max_local_epochs=0 is invalid: allowed >= 1" in caught.value.message
    assert "training.max_local_steps=0 is invalid: allowed >= 1" in caught.value.message


def test_training_minimums_above_maximums_are_refused_together() -> None:
    text = "[training]\nmin_lr = 0.5\nmin_batch_size = 2048\nmax_local_epochs = 0\n"
    with pytest.raises(ValidationError) as caught:
        parse_policy(text)
    described = {v.field: v.allowed for v in caught.value.violations}
    assert described == {
        "training.min_lr": "<= training.max_lr (0.1)",
        "training.min_batch_size": "<= training.max_batch_size (1024)",
        "training.max_local_epochs": ">= 1",
    }


def test_not_toml_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        parse_policy("[dp\nrequired = true")
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path / "missing.toml")


def test_target_epsilon_per_round_replaces_the_noise_multiplier() -> None:
    policy = parse_policy("[dp]\ntarget_epsilon_per_round = 0.5\n")
    assert policy.dp.noise_multiplier is None and policy.dp.target_epsilon_per_round == 0.5


def test_requests_may_tighten() -> None:
    text = (POLICIES / "default.toml").read_text()
    policy = parse_policy(text.replace("planned_rounds = 10", "noise_multiplier = 1.0"))
    tighter = apply_request(
        policy,
        PrivacyRequest(
            noise_multiplier=1.5,
            max_grad_norm=0.5,
            epsilon_budget=4.0,
            min_sites=5,
            metrics=(),
        ),
    )
    assert tighter.dp.noise_multiplier == 1.5 and tighter.dp.max_grad_norm == 0.5
    assert tighter.dp.epsilon_budget == 4.0 and tighter.secagg.min_sites == 5
    assert tighter.reporting.metrics == ()
    research = load_policy(POLICIES / "research.toml")
    assert apply_request(research, PrivacyRequest(dp=True)).dp.required
    fewer = apply_request(research, PrivacyRequest(metrics=("epsilon",)))
    assert fewer.reporting.metrics == ("epsilon",)


def test_a_looser_request_is_refused_with_every_reason() -> None:
    policy = load_policy(POLICIES / "default.toml")
    looser = PrivacyRequest(
        dp=False,
        noise_multiplier=0.5,
        max_grad_norm=5.0,
        epsilon_budget=50.0,
        secagg=False,
        min_sites=2,
        metrics=("loss", "ingest"),
    )
    with pytest.raises(PolicyViolation) as caught:
        apply_request(policy, looser)
    message = caught.value.message
    for reason in (
        "DP-SGD off, but the policy requires it",
        "noise multiplier 0.5 requested, but the policy sets its own noise (planned_rounds 10)",
        "clipping norm 5.0 > policy 1.0",
        "epsilon budget 50.0 > policy 8.0",
        "secure aggregation off",
        "min sites 2 < policy 3",
        "metrics the policy keeps at the site: ingest, loss",
    ):
        assert reason in message
    assert caught.value.exit_code == 8
    assert "'Small federations'" in caught.value.remedy  # what a smaller min_sites means
    fixed = parse_policy("[dp]\nnoise_multiplier = 1.0\n")
    with pytest.raises(PolicyViolation, match=r"noise multiplier 0\.5 < policy 1\.0"):
        apply_request(fixed, PrivacyRequest(noise_multiplier=0.5))
    assert apply_request(fixed, PrivacyRequest(noise_multiplier=1.5)).dp.noise_multiplier == 1.5
    with pytest.raises(PolicyViolation) as caught:
        apply_request(policy, PrivacyRequest(dp=False))
    assert "Small federations" not in caught.value.remedy  # only where min_sites is refused


def test_policy_check_shows_colluders_and_round_settings() -> None:
    from clinfl.cli.policy import _summary

    rows = dict(_summary(load_policy(POLICIES / "strict.toml")))
    assert "assumes up to 2 site(s) collude" in rows["secure aggregation"]
    assert rows["round settings"] == (
        "learning rate 1e-06 to 0.01; at most 5 local epochs or 2000 local steps; batch size 16 "
        "to 1024"
    )


def test_the_shipped_default_lets_nothing_leave_and_research_lists_every_metric() -> None:
    """Each metric lets a lying coordinator compute the site's own figures outside DP, so the
    clinical policies list none (epsilon included: it gives the batches per epoch); research
    lists them all, and a policy that omits [reporting] consents to none."""
    # the default joins the federated evaluation (its histograms leave only masked), nothing else
    assert load_policy(POLICIES / "default.toml").reporting.metrics == ("auc",)
    assert load_policy(POLICIES / "strict.toml").reporting.metrics == ()
    research = load_policy(POLICIES / "research.toml")
    assert set(research.reporting.metrics) == set(METRICS) == set(METRIC_DISCLOSURE)
    assert parse_policy("[dp]\nrequired = true\n").reporting.metrics == ()
    text = (POLICIES / "research.toml").read_text()
    for metric in METRICS:  # research.toml warns in place, metric by metric
        assert f"#   {metric}: " in text


def test_a_policy_without_dp_is_warned_about_differencing() -> None:
    research = load_policy(POLICIES / "research.toml")
    assert policy_warnings(research) == [NO_DP_WARNING]
    assert "approximation of this site's update" in NO_DP_WARNING
    assert policy_warnings(load_policy(POLICIES / "default.toml")) == []
    assert policy_warnings(parse_policy("[dp]\nrequired = false\n")) == [NO_DP_WARNING]
