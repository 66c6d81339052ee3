"""The privacy ledger: reserve, spend, release, refuse over budget, survive a reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clinfl.errors import BudgetExhausted
from clinfl.privacy.accounting import epsilon_of, make_accountant
from site_agent.ledger import SiteLedger

TERMS = {"delta": 1e-5, "accountant": "rdp", "grad_sample_mode": "hooks"}


def _reserve(ledger: SiteLedger, round_number: int, budget: float = 10.0, steps: int = 20):
    return ledger.reserve(
        run_id="run",
        round_number=round_number,
        noise_multiplier=1.0,
        sample_rate=0.05,
        steps=steps,
        budget=budget,
        **TERMS,
    )


def test_reserved_rounds_count_spent_and_released_ones_do_not(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path)
    first = _reserve(ledger, 1)
    assert ledger.epsilon(delta=1e-5, accountant="rdp") == pytest.approx(first.epsilon_after)
    ledger.spend(first.row_id, secagg=True, sites_in_sum=4)
    second = _reserve(ledger, 2)
    assert second.epsilon_after > first.epsilon_after
    ledger.release(second.row_id)
    assert ledger.epsilon(delta=1e-5, accountant="rdp") == pytest.approx(first.epsilon_after)
    states = [(r.round, r.state, r.sites_in_sum) for r in ledger.rounds()]
    assert states == [(1, "spent", 4), (2, "released", None)]
    ledger.spend(second.row_id, secagg=True)  # a released round can never become spent
    assert ledger.rounds()[1].state == "released"


def test_epsilon_matches_opacus_accountant_on_the_same_history(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path)
    for round_number in range(1, 4):
        _reserve(ledger, round_number, steps=10 * round_number)
    accountant = make_accountant("rdp")
    for steps in (10, 20, 30):
        for _ in range(steps):
            accountant.step(noise_multiplier=1.0, sample_rate=0.05)
    assert ledger.epsilon(delta=1e-5, accountant="rdp") == pytest.approx(
        accountant.get_epsilon(delta=1e-5)
    )


def test_make_accountant_continues_a_history_as_a_fresh_one_stepped_through_it() -> None:
    history = [(1.0, 0.05, 20), (1.3, 0.1, 7), (1.0, 0.05, 5)]
    continued = make_accountant("rdp", history)
    stepped = make_accountant("rdp")
    for noise, rate, steps in history:
        for _ in range(steps):
            stepped.step(noise_multiplier=noise, sample_rate=rate)
    expected = stepped.get_epsilon(delta=1e-5)
    assert continued.get_epsilon(delta=1e-5) == pytest.approx(expected, rel=1e-12)
    assert epsilon_of(history, delta=1e-5, accountant="rdp") == pytest.approx(expected, rel=1e-12)
    assert make_accountant("prv", history).mechanism() == "prv"
    with pytest.raises(ValueError, match="unknown accountant"):
        make_accountant("gdp")


def test_round_over_budget_is_refused_and_recorded(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path)
    spent = _reserve(ledger, 1).epsilon_after
    with pytest.raises(BudgetExhausted, match=r"past the budget 1.5 \(spent so far"):
        _reserve(ledger, 2, budget=1.5, steps=200)
    assert [r.round for r in ledger.rounds()] == [1]
    (refusal,) = ledger.refusals()
    assert refusal.round == 2 and refusal.epsilon_spent == pytest.approx(spent)
    assert refusal.epsilon_requested > 1.5


def test_a_reopened_ledger_continues_the_same_accounting(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path)
    _reserve(ledger, 1)
    ledger.close()  # a "crash" after reserving: the round stays reserved and counts
    reopened = SiteLedger(tmp_path)
    assert reopened.history() == [(1.0, 0.05, 20)]
    after = _reserve(reopened, 2).epsilon_after
    assert after == pytest.approx(epsilon_of([(1.0, 0.05, 20)] * 2, delta=1e-5, accountant="rdp"))
    journal = sqlite3.connect(tmp_path / "ledger.sqlite").execute("PRAGMA journal_mode").fetchone()
    assert journal == ("wal",)


def test_prv_and_rdp_agree_roughly_and_prv_is_tighter() -> None:
    history = [(1.0, 0.004, 25_000)]
    rdp = epsilon_of(history, delta=1e-5, accountant="rdp")
    prv = epsilon_of(history, delta=1e-5, accountant="prv")
    assert 3.5 < rdp < 4.5 and prv < rdp
