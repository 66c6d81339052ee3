"""``clinfl simulate``: run a federation in one process and print its results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape

from clinfl.algorithms import algorithm_summaries
from clinfl.cli.errors import cli_errors
from clinfl.cli.render import ProgressListener, rounds_table
from clinfl.config import (
    DataConfig,
    FederationConfig,
    MethodConfig,
    PrivacyConfig,
    RunConfig,
    SecAggConfig,
)
from clinfl.config_file import load_run_config
from clinfl.errors import ConfigError
from clinfl.simulation import run_simulation
from clinfl.simulation.dropouts import parse_dropout
from clinfl.simulation.resume import load_saved_run_config

_METHODS = "; ".join(f"{name}: {text}" for name, text in algorithm_summaries().items())


_FILE_COMPATIBLE = {"ctx", "config_file", "resume", "out", "as_json", "threads"}


def _refuse_run_options(ctx: typer.Context, flag: str, remedy: str) -> None:
    """Refuse run options given with ``--config`` or ``--resume`` (they would be ignored).

    Raises:
        ConfigError: naming the options given alongside.
    """
    clashing = [
        "--" + name.replace("_", "-")
        for name in ctx.params
        if name not in _FILE_COMPATIBLE
        and getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    ]
    if clashing:
        raise ConfigError(f"{flag} cannot be combined with {', '.join(clashing)}", remedy=remedy)


def _config_from_file(ctx: typer.Context, path: Path) -> RunConfig:
    """Load ``--config``.

    Raises:
        ConfigError: for run options given alongside, or a missing or bad file.
        ValidationError: for unknown keys or mistyped values in the file.
    """
    _refuse_run_options(ctx, "--config", "put those settings in the config file")
    return load_run_config(path)


def _thresholded(best: dict[str, Any]) -> str:
    """Describe the selected round's F1 at its validation-chosen thresholds."""
    if best.get("macro_f1_at_thresholds") is None:
        return "no thresholds chosen"
    operating = best.get("operating") or {}
    flagged = [name for name, c in operating.get("classes", {}).items() if c["flagged"]]
    note = f" ({', '.join(flagged)} kept 0.5: no validation positive)" if flagged else ""
    return (
        f"macro-F1 {100 * best['macro_f1_at_thresholds']:.2f}, micro-F1 "
        f"{100 * best['micro_f1_at_thresholds']:.2f} at thresholds chosen on validation "
        f"({operating.get('rule', '?')}){note}"
    )


def simulate(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Federation config file (TOML, tables [data] [method] [federation] [secagg] "
            "[privacy] [[drops]]); it replaces the run options, so only --out, --json and "
            "--threads may go with it.",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this folder after its last completed round (after a crash "
            "or a stop), with the configuration it saved; only --json and --threads may go "
            "with it.",
        ),
    ] = None,
    dataset: Annotated[
        str, typer.Option(help="digits (bundled demo data), cxr14 (PNGs) or dicom (a PACS export).")
    ] = "digits",
    images: Annotated[
        Path | None,
        typer.Option(help="cxr14: folder of PNG images; dicom: the DICOM export (recursive)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="cxr14: label CSV (Data_Entry_2017*.csv[.gz] or 14 named 0/1 columns)."),
    ] = None,
    split_dir: Annotated[
        Path | None,
        typer.Option(help="cxr14: folder with train_val_list.txt and test_list.txt."),
    ] = None,
    label_space: Annotated[
        str,
        typer.Option(
            help="dicom: the labels the export's labels.csv uses: cxr14 (the 14 findings) or "
            "digits (an export made with `clinfl data make-export --digits`)."
        ),
    ] = "cxr14",
    method: Annotated[str, typer.Option(help=f"Algorithm. {_METHODS}.")] = "fedncalign",
    sites: Annotated[
        int, typer.Option(help="Number of sites K (1 = centralized, no aggregation).")
    ] = 5,
    rounds: Annotated[int, typer.Option(help="Federated rounds R.")] = 6,
    local_epochs: Annotated[int, typer.Option(help="Local epochs E per round.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Local mini-batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration of the label skew.")] = 0.5,
    rho: Annotated[
        float,
        typer.Option(
            help="Class-presence ratio: each site holds round(rho*C) classes (0 < rho <= 1)."
        ),
    ] = 0.5,
    image_size: Annotated[
        int | None,
        typer.Option(
            help="Training image size in px (default: 16 for digits, 64 for cxr14 and dicom)."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed for data split, partition, initialisation, shuffling.")
    ] = 0,
    federation_seed: Annotated[
        int, typer.Option(help="Seed of the shared simplex ETF.")
    ] = 20240917,
    backbone: Annotated[
        str, typer.Option(help="ResNet-18 stem: auto (small below 64 px), standard, small.")
    ] = "auto",
    norm: Annotated[str, typer.Option(help="Normalisation: group (DP-ready) or batch.")] = "group",
    weights: Annotated[
        Path | None, typer.Option(help="Local ResNet-18 weights file (.safetensors or .pt).")
    ] = None,
    classifier: Annotated[
        str, typer.Option(help="fedncalign ablation: etf (fixed) or learnable classifier.")
    ] = "etf",
    classifier_bias: Annotated[
        bool,
        typer.Option(
            help="fedncalign: trainable per-class bias on the ETF classifier (as in the research "
            "code); --no-classifier-bias gives METHOD.md's bias-free logits."
        ),
    ] = True,
    ladm: Annotated[
        bool, typer.Option(help="fedncalign ablation: use LADM (--no-ladm pools features).")
    ] = True,
    queries: Annotated[
        str, typer.Option(help="fedncalign ablation: fixed ETF queries or learnable.")
    ] = "fixed",
    lambda_rej: Annotated[
        float | None,
        typer.Option(help="Weight of L_rej (0 disables) (default: 1 for digits, 0.01 for cxr14)."),
    ] = None,
    lambda_con: Annotated[float, typer.Option(help="Weight of L_con (0 disables).")] = 1.0,
    prox_mu: Annotated[float, typer.Option(help="fedprox: proximal weight mu.")] = 0.01,
    fedcurv_lambda: Annotated[
        float,
        typer.Option(
            help="fedcurv: weight lambda of the Fisher (EWC) penalty; each site's Fisher is "
            "scaled to a largest entry of 1, hence the large default (chosen on validation "
            "data by benchmarks/fedcurv_lambda.py)."
        ),
    ] = 1e5,
    composites_per_pair: Annotated[
        int, typer.Option(help="digits: train composites per digit pair.")
    ] = 12,
    max_samples: Annotated[
        int | None,
        typer.Option(help="Cap for quick runs: images read (cxr14), training samples (digits)."),
    ] = None,
    selection: Annotated[
        str, typer.Option(help="Model selection: best (validation macro-AUC) or last.")
    ] = "best",
    threshold_rule: Annotated[
        str,
        typer.Option(
            help="How each class's operating threshold is chosen on validation (never test): "
            "f1 (maximise F1), youden (sensitivity + specificity - 1) or sensitivity:S "
            "(the highest threshold reaching sensitivity S, e.g. sensitivity:0.9)."
        ),
    ] = "f1",
    threads: Annotated[
        int | None, typer.Option(help="Torch CPU threads (default: torch's choice).")
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where sites train and evaluate: cpu (default), auto (CUDA when present), "
            "cuda or cuda:N. Updates, masks and ledgers stay on the CPU; DP-SGD needs cpu."
        ),
    ] = "cpu",
    secagg: Annotated[
        str,
        typer.Option(
            help="Secure aggregation (SecAgg+): on (default) or off. With off, sites send updates "
            "in the clear."
        ),
    ] = "on",
    secagg_graph: Annotated[
        str,
        typer.Option(
            help="sparse: SecAgg+ neighbour graph of degree about 2 log2 n above 64 sites (up to "
            "64 sites the graph is always complete); complete: full SecAgg at any size."
        ),
    ] = "sparse",
    secagg_min_sites: Annotated[
        int | None,
        typer.Option(
            help="Fewest sites whose sum may be revealed, as the coordinator asks it (a site's "
            "policy may require more) (default: the sites' policies, or 3)."
        ),
    ] = None,
    secagg_max_colluders: Annotated[
        int,
        typer.Option(
            help="Sites assumed to collude with a malicious coordinator (c). The threshold is "
            "then t > (h + c) / 2 and a sum needs min_sites + c survivors; a site's policy may "
            "assume more."
        ),
    ] = 1,
    secagg_bits: Annotated[int, typer.Option(help="Modulus of the masked sums: 2**bits.")] = 32,
    secagg_clip: Annotated[
        float, typer.Option(help="Per-coordinate clip of a site's update before quantisation.")
    ] = 0.5,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Site policy TOML applied to every site (see policies/). With DP-SGD required, "
            "sites train with Opacus and keep a privacy ledger. Default: no DP."
        ),
    ] = None,
    policy_dir: Annotated[
        Path | None,
        typer.Option(help="Folder with one policy per site: site-1.toml, site-2.toml, ..."),
    ] = None,
    dp_mode: Annotated[
        str,
        typer.Option(
            help="Opacus per-sample-gradient mode: auto (fastest measured for the image size), "
            "hooks, ew, ghost, mixed-ghost (ghost clipping with ghost norms for the "
            "convolutions) or functorch."
        ),
    ] = "auto",
    drop: Annotated[
        list[str] | None,
        typer.Option(
            help="Inject a dropout: SITE:STAGE or SITE:STAGE:ROUND, stages train, advertise, "
            "share, masked-input, consistency, unmask (repeatable)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run folder for checkpoints, results.json and control.sqlite "
            "(default: runs/METHOD-TIME)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results JSON instead of tables.")
    ] = False,
) -> None:
    """Run an in-process federation (every site and the coordinator in this process)."""
    console = Console(stderr=as_json)
    with cli_errors(as_json=as_json):
        if secagg not in ("on", "off"):
            raise ConfigError(f"--secagg must be on or off, got {secagg!r}", remedy="--secagg on")
        if secagg_graph not in ("sparse", "complete"):
            raise ConfigError(
                f"--secagg-graph must be sparse or complete, got {secagg_graph!r}",
                remedy="--secagg-graph sparse",
            )
        if resume is not None:
            _refuse_run_options(ctx, "--resume", "resume with the run's own configuration")
            if out is not None or config_file is not None:
                raise ConfigError(
                    "--resume takes the run folder itself; --out and --config do not apply",
                    remedy=f"clinfl simulate --resume {resume}",
                )
            config, out = load_saved_run_config(resume), resume
            method = config.method.name
        elif config_file is not None:
            config = _config_from_file(ctx, config_file)
            method = config.method.name
        else:
            config = RunConfig(
                data=DataConfig(
                    dataset=dataset,  # type: ignore[arg-type]
                    images=images,
                    labels=labels,
                    label_space=label_space,
                    split_dir=split_dir,
                    image_size=image_size,
                    alpha=alpha,
                    rho=rho,
                    composites_per_pair=composites_per_pair,
                    max_samples=max_samples,
                ),
                method=MethodConfig(
                    name=method,
                    backbone=backbone,  # type: ignore[arg-type]
                    norm=norm,  # type: ignore[arg-type]
                    weights=weights,
                    classifier=classifier,  # type: ignore[arg-type]
                    classifier_bias=classifier_bias,
                    ladm=ladm,
                    queries=queries,  # type: ignore[arg-type]
                    lambda_rej=lambda_rej,
                    lambda_con=lambda_con,
                    prox_mu=prox_mu,
                    fedcurv_lambda=fedcurv_lambda,
                ),
                federation=FederationConfig(
                    sites=sites,
                    rounds=rounds,
                    local_epochs=local_epochs,
                    batch_size=batch_size,
                    lr=lr,
                    weight_decay=weight_decay,
                    seed=seed,
                    federation_seed=federation_seed,
                    selection=selection,  # type: ignore[arg-type]
                    threshold_rule=threshold_rule,
                    threads=threads,
                    device=device,
                ),
                secagg=SecAggConfig(
                    enabled=secagg == "on",
                    min_sites=secagg_min_sites,
                    max_colluders=secagg_max_colluders,
                    bits=secagg_bits,
                    clip=secagg_clip,
                    degree=max(sites - 1, 1) if secagg_graph == "complete" else None,
                ),
                privacy=PrivacyConfig(
                    policy=policy, policy_dir=policy_dir, grad_sample_mode=dp_mode
                ),
                drops=tuple(parse_dropout(text) for text in drop or ()),
            )
        if threads is not None:
            torch.set_num_threads(threads)
        run_dir = out or Path("runs") / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
        with ProgressListener(console, show_tables=not as_json) as listener:
            result = run_simulation(config, run_dir, listener=listener, resume=resume is not None)
        if as_json:
            print(json.dumps(result.summary, indent=2))
            return
        outcome = result.outcome
        best = result.summary["best"]
        if outcome.records and best is not None:
            console.print(rounds_table(outcome.records, best["round"], method))
            console.print(
                f"selected round {best['round']}: macro-AUC {100 * best['macro_auc']:.2f}, "
                f"micro-AUC {100 * best['micro_auc']:.2f}, "
                f"macro-F1 {100 * best['macro_f1']:.2f}, micro-F1 {100 * best['micro_f1']:.2f} "
                f"at 0.5; {_thresholded(best)}"
            )
        if outcome.stopped:
            console.print(f"[bold yellow]the federation {escape(outcome.stopped)}[/]")
        console.print(f"results: {result.results_path}  checkpoints: {run_dir / 'checkpoints'}")
        console.print(
            f"use the model: clinfl model export --run {run_dir} --out {run_dir / 'model'}, "
            "then clinfl model predict --model DIR --data EXPORT_OR_PNG_DIR --out predictions.csv"
        )
        console.print(
            f"audit reports: {run_dir / 'sites'}/site-K/audit_report.html, "
            f"{run_dir / 'federation_report.html'}"
        )
