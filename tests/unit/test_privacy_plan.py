"""What a DP round charges, how many rounds a budget allows, and the PRV accountant's rule."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.data_loader import DPDataLoader
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.config.policy import DPPolicy
from clinfl.privacy.accounting import (
    PRV_MAX_GRID_POINTS,
    charge_epsilon,
    epsilon_of,
    prv_grid_points,
)
from clinfl.privacy.plan import (
    RoundCharge,
    plan_budget,
    round_charge,
    rounds_within_budget,
)
from site_agent.ledger import SiteLedger

runner = CliRunner()
DELTA = 1e-5


def _first_refused(history: list, entry: tuple, budget: float, accountant: str = "rdp") -> int:
    """Brute force: the first round whose cumulative epsilon passes ``budget``."""
    for k in range(1, 1000):
        if epsilon_of([*history, *[entry] * k], delta=DELTA, accountant=accountant) > budget:
            return k
    raise AssertionError("budget never reached")


@pytest.mark.parametrize(("samples", "batch"), [(100, 32), (24, 8), (93 * 8, 8), (7, 32)])
def test_the_charge_has_opacus_rate_and_the_batches_its_poisson_loader_yields(
    samples: int, batch: int
) -> None:
    charge = round_charge(DPPolicy(), samples=samples, batch_size=batch, local_epochs=2)
    loader = DataLoader(TensorDataset(torch.zeros(samples)), batch_size=batch)
    poisson = DPDataLoader.from_data_loader(loader)
    assert charge.sample_rate == poisson.sample_rate == 1 / len(loader)
    assert charge.steps_per_epoch == len(poisson)
    assert charge.steps == 2 * len(poisson)
    assert charge.noise_multiplier == 1.0 and charge.calibrated_for is None


def test_the_charge_knows_its_answers() -> None:
    assert round_charge(DPPolicy(), samples=100, batch_size=32, local_epochs=3) == RoundCharge(
        1.0, 0.25, 12, 4
    )
    # 93 batches: Opacus' sampler yields int(1 / (1 / 93)) = 92 per epoch, and so is charged
    assert round_charge(DPPolicy(), samples=93 * 8, batch_size=8, local_epochs=1).steps == 92
    fixed = round_charge(DPPolicy(), samples=100, batch_size=32, local_epochs=3, local_steps=7)
    assert (fixed.steps, fixed.sample_rate) == (7, 0.25)
    with pytest.raises(ValueError, match="samples"):
        round_charge(DPPolicy(), samples=0, batch_size=8, local_epochs=1)


def test_a_per_round_target_calibrates_the_noise_for_the_round_s_steps() -> None:
    policy = DPPolicy(noise_multiplier=None, target_epsilon_per_round=2.0)
    charge = round_charge(policy, samples=200, batch_size=16, local_epochs=2)
    assert charge.calibrated_for == 2.0 and charge.steps == 26
    one = epsilon_of([charge.entry], delta=DELTA, accountant="rdp")
    assert 1.95 < one <= 2.0


def test_site_dp_steps_charge_what_the_plan_derives(tmp_path: Path) -> None:
    from .test_private_training import _site

    site, _ = _site(tmp_path, per_round=1.5)
    strategy = site.strategy
    policy = DPPolicy(noise_multiplier=None, target_epsilon_per_round=1.5)
    charge = round_charge(policy, samples=24, batch_size=8, local_epochs=1)
    assert (strategy.noise_multiplier, strategy.sample_rate) == (
        charge.noise_multiplier,
        charge.sample_rate,
    )


def test_rounds_within_budget_is_the_ledger_s_refusal_round_minus_one() -> None:
    charge = RoundCharge(1.0, 0.05, 20, 20)
    for budget in (2.0, 3.3, 4.0):
        first_refused = _first_refused([], charge.entry, budget)
        left = rounds_within_budget((), charge, budget=budget, delta=DELTA, accountant="rdp")
        assert (left.rounds, left.capped) == (first_refused - 1, False)
    prior = [(1.5, 0.1, 30), (1.0, 0.05, 20)]
    left = rounds_within_budget(prior, charge, budget=4.0, delta=DELTA, accountant="rdp")
    assert left.rounds == _first_refused(prior, charge.entry, 4.0) - 1
    over = rounds_within_budget((), charge, budget=1.0, delta=DELTA, accountant="rdp")
    assert (over.rounds, over.capped) == (0, False)
    capped = rounds_within_budget((), charge, budget=500, delta=DELTA, accountant="rdp", cap=40)
    assert (capped.rounds, capped.capped) == (40, True)


def test_a_plan_lists_cumulative_epsilon_and_marks_rounds_past_the_budget() -> None:
    policy = DPPolicy(epsilon_budget=3.3)
    charge = RoundCharge(1.0, 0.05, 20, 20)
    allowed = _first_refused([], charge.entry, 3.3) - 1
    plan = plan_budget(policy, charge)
    assert plan.rounds_allowed.rounds == allowed == len(plan.rounds)
    asked = plan_budget(policy, charge, rounds=allowed + 2)
    assert [r.within_budget for r in asked.rounds] == [True] * allowed + [False, False]
    for r in asked.rounds:
        history = [charge.entry] * r.round
        assert r.epsilon == epsilon_of(history, delta=DELTA, accountant="rdp")
    assert plan.round_epsilon.epsilon == asked.rounds[0].epsilon


def _fresh(cls: type, history: list) -> list[float]:
    """Epsilon after each entry, from a fresh Opacus accountant stepped one step at a time."""
    accountant, out = cls(), []
    for noise, rate, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(float(accountant.get_epsilon(delta=DELTA)))
    return out


@pytest.mark.parametrize(("kind", "cls"), [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_the_ledger_charges_what_a_fresh_opacus_accountant_says(
    tmp_path: Path, kind: str, cls: type
) -> None:
    history = [(1.0, 0.05, 20), (1.5, 0.1, 10), (1.0, 0.05, 20), (0.8, 0.2, 5)]
    ledger = SiteLedger(tmp_path)
    for number, (noise, rate, steps) in enumerate(history, 1):
        ledger.reserve(
            run_id="run", round_number=number, noise_multiplier=noise, sample_rate=rate,
            steps=steps, budget=100.0, delta=DELTA, accountant=kind, grad_sample_mode="hooks",
        )  # fmt: skip
    rounds = ledger.rounds()
    assert [r.accountant for r in rounds] == [kind] * 4
    # merging equal (noise, rate) entries moves PRV's discretisation by ~1e-10 at most
    fresh = _fresh(cls, history)
    if kind == "rdp":  # the same sums, bit for bit
        assert [r.epsilon for r in rounds] == fresh
    assert [r.epsilon for r in rounds] == pytest.approx(fresh, rel=1e-8)


def test_prv_falls_back_to_rdp_where_it_cannot_compute_and_records_it(tmp_path: Path) -> None:
    tiny_noise = (0.05, 0.1, 10)  # PRV: a 4.4e6-point grid, which returned infinity
    assert prv_grid_points([tiny_noise], DELTA) > PRV_MAX_GRID_POINTS
    assert charge_epsilon([tiny_noise], delta=DELTA, accountant="prv").accountant == "rdp"
    no_noise = charge_epsilon([(0.0, 0.1, 10)], delta=DELTA, accountant="prv")
    assert no_noise.accountant == "rdp" and no_noise.epsilon == float("inf")
    ledger = SiteLedger(tmp_path)
    terms = {"run_id": "run", "budget": 1e6, "delta": DELTA, "grad_sample_mode": "hooks"}
    ledger.reserve(
        round_number=1, noise_multiplier=1.0, sample_rate=0.05, steps=20, accountant="prv",
        **terms,
    )  # fmt: skip
    ledger.reserve(
        round_number=2, noise_multiplier=0.05, sample_rate=0.1, steps=10, accountant="prv",
        **terms,
    )  # fmt: skip
    first, second = ledger.rounds()
    assert (first.accountant, second.accountant) == ("prv", "rdp")
    history = [(1.0, 0.05, 20), tiny_noise]
    assert second.epsilon == pytest.approx(_fresh(RDPAccountant, history)[-1], rel=1e-12)
    assert first.epsilon == pytest.approx(_fresh(PRVAccountant, history[:1])[0], rel=1e-8)


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


POLICY = (
    "[dp]\nepsilon_budget = 3.3\nnoise_multiplier = 1.0\n[data]\nmin_samples = 10\n"
    '[reporting]\nmetrics = ["counts"]\n'
)


def test_policy_plan_json_has_the_known_answers(tmp_path: Path) -> None:
    policy = _policy(tmp_path, POLICY)
    result = runner.invoke(
        app,
        ["policy", "plan", "--policy", str(policy), "--samples", "200", "--batch-size", "10",
         "--local-epochs", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    entry = (1.0, 0.05, 20)  # 200 samples at batch 10: rate 1/20, 20 steps per epoch
    assert (plan["noise_multiplier"], plan["sample_rate"], plan["steps_per_round"]) == entry
    assert plan["epsilon_per_round"] == epsilon_of([entry], delta=DELTA, accountant="rdp")
    allowed = _first_refused([], entry, 3.3) - 1
    assert plan["rounds_allowed"] == allowed and not plan["rounds_allowed_capped"]
    assert [r["round"] for r in plan["rounds"]] == list(range(1, allowed + 1))
    assert plan["rounds"][-1]["epsilon_cumulative"] == epsilon_of(
        [entry] * allowed, delta=DELTA, accountant="rdp"
    )


def test_policy_plan_text_says_noise_rate_steps_rounds_and_past_the_budget(
    tmp_path: Path,
) -> None:
    policy = _policy(tmp_path, POLICY)
    result = runner.invoke(
        app,
        ["policy", "plan", "--policy", str(policy), "--samples", "200", "--batch-size", "10",
         "--rounds", "8"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    allowed = _first_refused([], (1.0, 0.05, 20), 3.3) - 1
    for text in ("noise multiplier: 1 (the policy's)", "sampling rate: 0.05", "steps per round:",
                 f"rounds the budget allows: {allowed}", "PAST THE BUDGET"):  # fmt: skip
        assert text in result.output
    assert result.output.count("PAST THE BUDGET") == 8 - allowed


def test_policy_plan_refuses_options_outside_the_policy_in_one_line(tmp_path: Path) -> None:
    policy = _policy(tmp_path, POLICY.replace('["counts"]', "[]"))
    result = runner.invoke(
        app,
        ["policy", "plan", "--policy", str(policy), "--samples", "5", "--batch-size", "4",
         "--local-epochs", "2"],
    )  # fmt: skip
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: invalid plan options") and "Traceback" not in line
    for field in ("--samples=5", "--batch-size=4", "--local-steps=None"):
        assert field in line


@pytest.mark.parametrize(("planned", "samples", "batch"), [(10, 300, 128), (3, 200, 32)])
def test_planned_rounds_set_the_noise_that_spends_the_budget_in_exactly_those_rounds(
    planned: int, samples: int, batch: int
) -> None:
    dp = DPPolicy(epsilon_budget=8.0, noise_multiplier=None, planned_rounds=planned)
    charge = round_charge(dp, samples=samples, batch_size=batch, local_epochs=1)
    plan = plan_budget(dp, charge)
    assert plan.rounds_allowed.rounds == planned  # one more round would pass the budget
    last = epsilon_of([charge.entry] * planned, delta=dp.delta, accountant="rdp")
    assert 8.0 * 0.99 <= last <= 8.0
    spent = [(charge.noise_multiplier * 2, charge.sample_rate, charge.steps)]  # an earlier run
    after = round_charge(dp, samples=samples, batch_size=batch, local_epochs=1, spent=spent)
    assert after.noise_multiplier > charge.noise_multiplier  # less budget left: more noise
    total = epsilon_of([*spent, *[after.entry] * planned], delta=dp.delta, accountant="rdp")
    assert total <= 8.0
