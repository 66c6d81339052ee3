"""``clinfl policy check FILE``: validate a site policy and say what it allows."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from clinfl.policy import METRIC_DISCLOSURE, SitePolicy, load_policy, policy_warnings
from clinfl.training_bounds import work_may_follow_size

policy_app = typer.Typer(help="Site privacy policies.", no_args_is_help=True)


def _summary(policy: SitePolicy) -> list[tuple[str, str]]:
    dp, secagg, data, training = policy.dp, policy.secagg, policy.data, policy.training
    if dp.noise_multiplier is not None:
        noise = f"noise multiplier {dp.noise_multiplier}"
    elif dp.planned_rounds is not None:
        noise = (
            f"noise set by the site so that {dp.planned_rounds} rounds spend the budget "
            "(`clinfl policy plan` shows it)"
        )
    else:
        noise = f"noise set for epsilon {dp.target_epsilon_per_round} per round"
    rows = [
        (
            "DP-SGD",
            "required" if dp.required else "off unless the coordinator asks for it",
        ),
        (
            "privacy budget",
            f"epsilon {dp.epsilon_budget} in total at delta {dp.delta} "
            f"({dp.accountant} accountant)",
        ),
        ("per step", f"clip per-sample gradients to L2 {dp.max_grad_norm}, {noise}"),
        ("noise source", "cryptographic (OS)" if dp.secure_rng else "pseudo-random (torch)"),
        (
            "secure aggregation",
            ("required" if secagg.required else "optional")
            + f"; sums over at least {secagg.min_sites} sites; "
            f"weight capped at {secagg.max_weight}; "
            f"assumes up to {secagg.max_colluders} site(s) collude with the coordinator",
        ),
        (
            "round settings",
            f"learning rate {training.min_lr:g} to {training.max_lr:g}; at most "
            f"{training.max_local_epochs} local epochs or {training.max_local_steps} local "
            f"steps; batch size {training.min_batch_size} "
            f"to {training.max_batch_size}",
        ),
        (
            "local training",
            "as the run asks: local epochs, or a fixed number of local steps"
            if work_may_follow_size(policy)
            else "a fixed number of local steps only (federation.local_steps): sample counts "
            "stay at the site, so its work per round must not follow them",
        ),
        (
            "data",
            f"modalities {', '.join(data.modalities)}; body parts {', '.join(data.body_parts)}; "
            f"views {', '.join(data.views)}; at least {data.min_samples} samples",
        ),
        ("may leave the site", ", ".join(policy.reporting.metrics) or "nothing"),
    ]
    return rows


@policy_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="Policy TOML file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the policy as JSON.")] = False,
) -> None:
    """Validate a policy file (every problem at once) and print what it allows."""
    with cli_errors(as_json=as_json):
        policy = load_policy(file)
        disclosed = {m: METRIC_DISCLOSURE[m] for m in policy.reporting.metrics}
        warnings = policy_warnings(policy)
        if as_json:
            document = {"valid": True, **asdict(policy), "discloses": disclosed}
            print(json.dumps({**document, "warnings": warnings}, indent=2))
            return
        table = Table(title=f"{file}: valid (sha256 {policy.sha256[:12]}...)")
        table.add_column("term")
        table.add_column("this policy")
        for term, text in _summary(policy):
            table.add_row(term, text)
        console = Console()
        console.print(table)
        if disclosed:
            console.print("What a lying coordinator can compute from the metrics listed:")
            for metric, text in disclosed.items():
                console.print(f"  {metric}: {text}", highlight=False)
            console.print(
                "Remove a metric from reporting.metrics to keep it at the site "
                "(docs/threat-model.md, 'What the coordinator learns').",
                highlight=False,
            )
        for warning in warnings:
            console.print(f"Warning: {warning}.", highlight=False)
