"""`make demo` runs the DP recipe the privacy-utility benchmark measured, under the default policy.

The recipe lives once, in ``benchmarks/privacy_utility.py`` (``RECIPES["digits"]``); the
Makefile's ``DEMO_RECIPE`` must give the same settings, and the shipped default policy must be
the benchmark's epsilon-8 cell (budget 8, planned over the recipe's rounds), so the table in
docs/benchmarks.md describes what `make demo` runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from benchmarks.privacy_utility import ABLATION_EPSILON, RECIPES, policy_text
from clinfl.config.policy import load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
FLAGS = {"method.name": "--method", "federation.rounds": "--rounds"}


def _demo_options() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text()
    found = re.search(r"^DEMO_RECIPE := ((?:.*\\\n)*.*)$", text, flags=re.MULTILINE)
    assert found, "the Makefile defines no DEMO_RECIPE"
    words = shlex.split(found.group(1).replace("\\\n", " "))
    return dict(zip(words[::2], words[1::2], strict=True))


def _flag(setting: str) -> str:
    return FLAGS.get(setting, "--" + setting.split(".")[1].replace("_", "-"))


def test_the_demo_runs_the_benchmarked_digits_recipe() -> None:
    options = _demo_options()
    recipe = RECIPES["digits"]
    expected = {_flag(k): v for k, v in recipe.items() if not isinstance(v, bool)}
    assert set(options) == set(expected)
    for flag, value in expected.items():
        assert type(value)(options[flag]) == value, flag
    assert recipe["method.pretrained"] is True and "--no-pretrained" not in options


def test_the_default_policy_is_the_benchmarks_epsilon_8_cell() -> None:
    shipped = load_policy(ROOT / "policies" / "default.toml").dp
    rounds = RECIPES["digits"]["federation.rounds"]
    benchmarked = parse_policy(policy_text(ABLATION_EPSILON, rounds)).dp
    assert shipped == benchmarked
    assert shipped.planned_rounds == rounds and shipped.epsilon_budget == 8.0
