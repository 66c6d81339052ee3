"""``clinfl cv compare``: two cross-validated runs on the same folds, paired by patient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clinfl.cli.errors import cli_errors
from clinfl.crossval.bootstrap import DRAWS
from clinfl.crossval.compare import compare_cv_runs


def compare(
    run_a: Annotated[Path, typer.Argument(help="A `clinfl simulate --cv` run folder (A).")],
    run_b: Annotated[Path, typer.Argument(help="Another, on the same folds (B).")],
    draws: Annotated[int, typer.Option(help="Patient bootstrap draws.")] = DRAWS,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print A minus B (overall and per site) with patient-paired bootstrap 95% intervals.

    With a federated run as A and a local-only run as B, the per-site rows are what each site
    gains by joining the federation. Runs whose folds differ are refused.
    """
    with cli_errors(as_json=as_json):
        comparison = compare_cv_runs(run_a, run_b, draws=draws, seed=seed)
        if as_json:
            print(json.dumps(comparison.to_json_dict(), indent=2))
        else:
            print(comparison.markdown(run_a.name, run_b.name), end="")
