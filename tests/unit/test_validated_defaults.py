"""The CLI's digits defaults are what the reference benchmark chose on validation.

The expected values are read from the benchmark's recorded results
(``benchmarks/results/reference.json``, the preset whose tables docs/benchmarks.md shows), never
written here: a rerun of the benchmark that chooses differently fails this test until the
digits preset (``clinfl/config/presets.py``) follows it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.reference import RESULTS
from benchmarks.reference_grid import validated_defaults
from clinfl.config import RunConfig
from clinfl.config.presets import resolve_defaults


@pytest.fixture(scope="module")
def chosen() -> dict[str, Any]:
    if not RESULTS.is_file():
        pytest.skip(f"{RESULTS} is absent: no reference results to check the defaults against")
    values = validated_defaults(json.loads(RESULTS.read_text()))
    if not values:
        pytest.skip(f"{RESULTS} has no tuning stage: nothing was chosen on validation")
    return values


def _default(field: str) -> Any:
    """What plain ``clinfl simulate`` (digits, no options) runs with for ``field``."""
    section, _, key = field.partition(".")
    return getattr(getattr(resolve_defaults(RunConfig()), section), key)


@pytest.mark.parametrize(
    "field",
    [
        "federation.lr",
        "method.lambda_rej",
        "method.lambda_con",
        "method.fedcurv_lambda",
        "method.prox_mu",
        "data.image_size",
        "method.width",
    ],
)
def test_the_digits_default_is_the_benchmarks_choice(chosen: dict[str, Any], field: str) -> None:
    assert field in chosen, f"the reference results record no {field}"
    assert _default(field) == chosen[field], (
        f"{field}: plain `clinfl simulate` uses {_default(field)!r}, the reference benchmark "
        f"chose {chosen[field]!r}; update clinfl/config/presets.py (DIGITS)"
    )


def test_the_digits_head_follows_the_benchmarks_choice(chosen: dict[str, Any]) -> None:
    if "method.head_bias" not in chosen:
        pytest.skip(
            "the reference results predate the tuning stage's head grid: FedAvg's head was "
            "not chosen on the tuning seed (benchmarks/reference_notes.md)"
        )
    assert _default("method.head_bias") == chosen["method.head_bias"]

