"""``clinfl policy check FILE`` and ``clinfl policy plan``: what a site policy allows and spends.

``check`` validates a policy and says what it allows; ``plan`` says, before any training, what
a site of a given size would spend under it: the noise, sampling rate and steps of one round
(:func:`clinfl.privacy.plan.round_charge`, the derivation the site itself uses), the epsilon of
one round, how many rounds the budget allows and the cumulative epsilon after each round.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from clinfl.config.policy import METRIC_DISCLOSURE, SitePolicy, load_policy, policy_warnings
from clinfl.config.run import FederationConfig
from clinfl.errors import ValidationError, Violation
from clinfl.federation.messages import RoundSettings
from clinfl.privacy.plan import MAX_PLANNED_ROUNDS, BudgetPlan, plan_budget, round_charge
from clinfl.training_bounds import (
    round_settings_violations,
    training_mode_violation,
    work_may_follow_size,
)


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


_RUN_DEFAULTS = FederationConfig()


def _plan_violations(
    policy: SitePolicy,
    *,
    samples: int,
    batch_size: int,
    local_epochs: int | None,
    local_steps: int | None,
    rounds: int | None,
) -> list[Violation]:
    """Return every option of ``clinfl policy plan`` the site under ``policy`` would refuse."""
    out: list[Violation] = []
    if local_epochs is not None and local_steps is not None:
        out.append(Violation("--local-epochs", local_epochs, "not with --local-steps", "give one"))
    min_samples = policy.data.min_samples
    if samples < min_samples:
        out.append(
            Violation(
                "--samples",
                samples,
                f">= {min_samples} (data.min_samples; the site refuses to train on fewer)",
                "plan for the site's real training sample count",
            )
        )
    if rounds is not None and not 1 <= rounds <= MAX_PLANNED_ROUNDS:
        out.append(Violation("--rounds", rounds, f"1..{MAX_PLANNED_ROUNDS}", "list 1 or more"))
    mode = training_mode_violation(policy, local_steps)
    if mode is not None:
        out.append(Violation("--local-steps", None, mode.allowed, "give --local-steps N"))
    # the learning rate charges nothing: the policy's lowest one stands in for the run's
    settings = RoundSettings(
        round=1,
        local_epochs=_RUN_DEFAULTS.local_epochs if local_epochs is None else local_epochs,
        batch_size=batch_size,
        lr=policy.training.min_lr,
        local_steps=local_steps,
    )
    out += [
        Violation(f"--{v.field.replace('_', '-')}", v.value, v.allowed, v.fix)
        for v in round_settings_violations(settings, bounds=policy.training)
    ]
    return out


def _plan_document(
    file: Path, policy: SitePolicy, plan: BudgetPlan, *, samples: int, batch_size: int,
    local_epochs: int, local_steps: int | None,
) -> dict[str, object]:  # fmt: skip
    charge, allowed = plan.charge, plan.rounds_allowed
    return {
        "policy": str(file),
        "policy_sha256": policy.sha256,
        "dp_required": policy.dp.required,
        "samples": samples,
        "batch_size": batch_size,
        "local_epochs": None if local_steps is not None else local_epochs,
        "local_steps": local_steps,
        "noise_multiplier": charge.noise_multiplier,
        "noise_calibrated_for_epsilon_per_round": charge.calibrated_for,
        "planned_rounds": policy.dp.planned_rounds,
        "sample_rate": charge.sample_rate,
        "steps_per_epoch": charge.steps_per_epoch,
        "steps_per_round": charge.steps,
        "accountant": plan.accountant,
        "delta": plan.delta,
        "epsilon_budget": plan.budget,
        "epsilon_per_round": plan.round_epsilon.epsilon,
        "epsilon_per_round_accountant": plan.round_epsilon.accountant,
        "rounds_allowed": allowed.rounds,
        "rounds_allowed_capped": allowed.capped,
        "round_cap": MAX_PLANNED_ROUNDS,
        "rounds": [
            {
                "round": r.round,
                "epsilon_cumulative": r.epsilon,
                "accountant": r.accountant,
                "within_budget": r.within_budget,
            }
            for r in plan.rounds
        ],
    }


def _print_plan(document: dict[str, object], plan: BudgetPlan, warnings: list[str]) -> None:
    charge, allowed = plan.charge, plan.rounds_allowed
    source, batch = document["policy"], document["batch_size"]
    print(
        f"Privacy plan: {source} (sha256 {str(document['policy_sha256'])[:12]}...), "
        f"{document['samples']} training samples, before any training"
    )
    if charge.calibrated_for is not None:
        noise = f"{charge.noise_multiplier:.4f} (calibrated for epsilon {charge.calibrated_for:g}"
        noise += " per round)"
    elif document.get("planned_rounds") is not None:
        noise = (
            f"{charge.noise_multiplier:.4f} (set by the site so that "
            f"{document['planned_rounds']} rounds spend the budget)"
        )
    else:
        noise = f"{charge.noise_multiplier:g} (the policy's)"
    if document["local_steps"] is not None:
        work = f"{document['local_steps']} local steps"
    else:
        work = f"{document['local_epochs']} local epoch(s) of {charge.steps_per_epoch} batches"
    fits = (
        f"at least {allowed.rounds} (the plan counts up to {MAX_PLANNED_ROUNDS})"
        if allowed.capped
        else str(allowed.rounds)
    )
    first = plan.round_epsilon
    rows = [
        ("noise multiplier", noise),
        ("sampling rate", f"{charge.sample_rate:.6g} (Poisson, batch size {batch})"),
        ("steps per round", f"{charge.steps} ({work})"),
        ("epsilon of one round", f"{first.epsilon:.4f} ({first.accountant})"),
        ("budget", f"epsilon {plan.budget:g} at delta {plan.delta:g} ({plan.accountant})"),
        ("rounds the budget allows", fits),
    ]
    for term, text in rows:
        print(f"  {term}: {text}")
    table = Table(title="expected cumulative epsilon")
    for column in ("round", "epsilon", "accountant", "budget"):
        table.add_column(column)
    for r in plan.rounds:
        within = "within" if r.within_budget else "PAST THE BUDGET (refused)"
        table.add_row(str(r.round), f"{r.epsilon:.4f}", r.accountant, within)
    Console().print(table)
    if len(plan.rounds) < allowed.rounds:
        print(f"(listed {len(plan.rounds)} of {fits} rounds; --rounds N lists N)")
    for warning in warnings:
        print(f"Warning: {warning}.")


def plan(
    policy_file: Annotated[Path, typer.Option("--policy", help="Policy TOML file.")],
    samples: Annotated[int, typer.Option(help="The site's training sample count.")],
    batch_size: Annotated[
        int, typer.Option(help="Batch size (the sampling rate is 1 / ceil(samples / batch)).")
    ] = _RUN_DEFAULTS.batch_size,
    local_epochs: Annotated[
        int | None,
        typer.Option(help=f"Local epochs per round [default: {_RUN_DEFAULTS.local_epochs}]."),
    ] = None,
    local_steps: Annotated[
        int | None, typer.Option(help="Local steps per round (instead of epochs).")
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(help="Rounds to list [default: those the budget allows, at most 100]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Say what a site would spend under a policy, before any training.

    The noise multiplier, sampling rate and steps of one round, its epsilon, how many rounds
    the budget allows, and the cumulative epsilon after each round: the same derivation and
    accountant as the site's ledger.
    """
    with cli_errors(as_json=as_json):
        policy = load_policy(policy_file)
        violations = _plan_violations(
            policy,
            samples=samples,
            batch_size=batch_size,
            local_epochs=local_epochs,
            local_steps=local_steps,
            rounds=rounds,
        )
        if violations:
            raise ValidationError("plan options for this policy", violations)
        epochs = _RUN_DEFAULTS.local_epochs if local_epochs is None else local_epochs
        charge = round_charge(
            policy.dp,
            samples=samples,
            batch_size=batch_size,
            local_epochs=epochs,
            local_steps=local_steps,
        )
        budget = plan_budget(policy.dp, charge, rounds=rounds)
        document = _plan_document(
            policy_file, policy, budget, samples=samples, batch_size=batch_size,
            local_epochs=epochs, local_steps=local_steps,
        )  # fmt: skip
        warnings = []
        if not policy.dp.required:
            warnings.append(
                "dp.required is false: this is what a round with DP-SGD charges; a run "
                "without it spends no epsilon and has no DP guarantee"
            )
        if policy.dp.delta >= 1 / samples:
            warnings.append(
                f"delta {policy.dp.delta:g} is not below 1/n = 1/{samples}: the guarantee is weak"
            )
        if as_json:
            print(json.dumps({**document, "warnings": warnings}, indent=2))
            return
        _print_plan(document, budget, warnings)
