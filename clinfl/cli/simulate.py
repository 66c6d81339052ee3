"""``clinfl simulate``: run a federation in one process and print its results."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.markup import escape

from clinfl.algorithms import algorithm_summaries
from clinfl.cli.dp_hint import dp_from_scratch_hint
from clinfl.cli.errors import cli_errors
from clinfl.cli.options import FieldOption, FieldValues, with_field_options
from clinfl.cli.render import ProgressListener, rounds_table
from clinfl.config import DROP_STAGES, RunConfig
from clinfl.config.file import load_run_config
from clinfl.crossval.runner import run_cross_validation
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


def _thresholded(best: Mapping[str, Any]) -> str:
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


def _cross_validate(
    console: Console, config: RunConfig, run_dir: Path, *, resume: bool, as_json: bool
) -> None:
    """Run ``--cv K`` and print its table (or ``cv.json`` with ``--json``).

    Raises:
        ClinflError: any error of the folds' runs.
    """
    with ProgressListener(console, show_tables=not as_json) as listener:
        result = run_cross_validation(
            config, run_dir, listener=listener, on_fold=listener.fold, resume=resume
        )
    if as_json:
        print(json.dumps(result.report, indent=2))
        return
    console.print(result.table_path.read_text(), markup=False, highlight=False)
    console.print(
        f"cross-validation: {result.report_path}  predictions: {result.predictions_path}  "
        f"folds: {run_dir}/fold-K/results.json; compare two runs on the same folds with "
        "clinfl cv compare RUN_A RUN_B"
    )


# The run options: one row per run configuration field. Each option's type and default are the
# field's own (clinfl.config.run); its name is the field's key unless given.
RUN_OPTIONS: tuple[FieldOption, ...] = (
    FieldOption(
        "data.dataset", "digits (bundled demo data), cxr14 (PNGs) or dicom (a PACS export)."
    ),
    FieldOption("data.images", "cxr14: folder of PNG images; dicom: the DICOM export (recursive)."),
    FieldOption(
        "data.labels", "cxr14: label CSV (Data_Entry_2017*.csv[.gz] or 14 named 0/1 columns)."
    ),
    FieldOption("data.split_dir", "cxr14: folder with train_val_list.txt and test_list.txt."),
    FieldOption(
        "data.label_space",
        "cxr14 and dicom: what the labels file's columns mean: cxr14 (the 14 ChestX-ray14 "
        "findings), chexpert (the CheXpert labeler's 14 observations), custom (the columns "
        "named by --label-column) or digits (an export made with `clinfl data make-export "
        "--digits`).",
    ),
    FieldOption(
        "data.label_columns",
        "--label-space custom: one finding column of the labels file (0/1 cells); repeat it "
        "for each class, in the order the model outputs them.",
        name="label_column",
    ),
    FieldOption(
        "data.uncertain_labels",
        "--label-space chexpert: uncertain cells (-1) count as ones (U-Ones) or zeros "
        "(U-Zeros); blank cells are negatives.",
    ),
    FieldOption("method.name", f"Algorithm. {_METHODS}.", name="method"),
    FieldOption("federation.sites", "Number of sites K (1 = centralized, no aggregation)."),
    FieldOption("federation.rounds", "Federated rounds R."),
    FieldOption("federation.local_epochs", "Local epochs E per round (unused with --local-steps)."),
    FieldOption(
        "federation.local_steps",
        "Train exactly this many local steps per round, each on a full batch, instead of "
        "local epochs, so a site's work does not follow its size. Sites whose policy keeps "
        "sample counts at the site require it; if such a site takes part and this is unset, "
        "the simulation derives local_epochs x ceil(mean site training size / batch size) "
        "and prints it.",
    ),
    FieldOption("federation.batch_size", "Local mini-batch size."),
    FieldOption(
        "federation.augment_multiplicity",
        "Train each sample as this many randomly translated views (up to 1/8 of the image "
        "size, no flips); under DP-SGD their gradients are averaged per sample before "
        "clipping, so the privacy charge is unchanged (--dp-mode auto then means hooks). A "
        "step costs about this many times as much. 1: no augmentation.",
    ),
    FieldOption(
        "federation.ema_decay",
        "Send the exponential moving average of the parameters over the round's local steps "
        "(decay in (0, 1), horizon about 1/(1-decay) steps, started at the global model) "
        "instead of the last step's; no privacy cost. Default: the last step's.",
    ),
    FieldOption("federation.lr", "AdamW learning rate."),
    FieldOption("federation.weight_decay", "AdamW weight decay."),
    FieldOption("data.alpha", "Dirichlet concentration of the label skew."),
    FieldOption(
        "data.rho", "Class-presence ratio: each site holds round(rho*C) classes (0 < rho <= 1)."
    ),
    FieldOption("data.image_size", "Training image size in px."),
    FieldOption("federation.seed", "Seed for data split, partition, initialisation, shuffling."),
    FieldOption("federation.federation_seed", "Seed of the shared simplex ETF."),
    FieldOption(
        "method.backbone",
        "ResNet-18 stem: auto (small below 64 px), standard, small, or compact "
        "(small's token map at about a third of its compute); or mobilenet_v2 (ImageNet "
        "weights from `clinfl weights fetch`) or densenet121 (give --init-weights; "
        "torchvision or TorchXRayVision key names). docs/method.md.",
    ),
    FieldOption("method.norm", "Normalisation: group (DP-ready) or batch."),
    FieldOption(
        "method.width",
        "ResNet-18 base width: 64 (the full network, the paper's) or 8/16/32 (CPU-sized).",
    ),
    FieldOption(
        "method.init_weights",
        "Weights file the backbone starts from (.safetensors, or a torch state dict read "
        "with weights_only=True); a file that does not fit names the first mismatching key.",
    ),
    FieldOption(
        "method.pretrained",
        "mobilenet_v2 without --init-weights: start from the cached ImageNet weights; "
        "--no-pretrained starts from random weights.",
    ),
    FieldOption(
        "method.train_blocks",
        "Train only the backbone's last N blocks (0: the head alone); the earlier ones keep "
        "their initial weights and never travel (default: train the whole backbone).",
    ),
    FieldOption(
        "method.feature_stride",
        "mobilenet_v2/densenet121: 16 cuts the network after its last stride-16 block "
        "(a finer LADM token map), 32 keeps all of it (default: 16 for mobilenet_v2, chosen "
        "by measurement, docs/method.md; 32 for densenet121).",
    ),
    FieldOption("method.classifier", "fedncalign ablation: etf (fixed) or learnable classifier."),
    FieldOption(
        "method.classifier_bias",
        "fedncalign: trainable per-class bias on the ETF classifier (as in the research "
        "code); --no-classifier-bias gives METHOD.md's bias-free logits.",
    ),
    FieldOption("method.ladm", "fedncalign ablation: use LADM (--no-ladm pools features)."),
    FieldOption("method.queries", "fedncalign ablation: fixed ETF queries or learnable."),
    FieldOption(
        "method.query_scaling",
        "fedncalign: none (the paper's LADM) or layernorm (clinfl extension: LayerNorm "
        "on queries and tokens, so class attention can differ; docs/method.md).",
    ),
    FieldOption("method.ladm_width", "fedncalign: LADM attention width (default: feature width)."),
    FieldOption(
        "method.head_bias",
        "Linear-head baselines: where the head's bias starts: prior (logit of 1/C, as "
        "FedNCAlign-ML's classifier) or zero.",
    ),
    FieldOption(
        "method.lambda_rej",
        "Weight of L_rej (0 disables; the paper: 1 on clean backgrounds, 0.01 on X-rays).",
    ),
    FieldOption("method.lambda_con", "Weight of L_con (0 disables; the paper: 1)."),
    FieldOption("method.prox_mu", "fedprox: proximal weight mu."),
    FieldOption(
        "method.fedcurv_lambda",
        "fedcurv: weight lambda of the Fisher (EWC) penalty; each site's Fisher is "
        "scaled to a largest entry of 1.",
    ),
    FieldOption("data.composites_per_pair", "digits: train composites per digit pair."),
    FieldOption(
        "data.max_samples",
        "Cap for quick runs: images read (cxr14), training samples (digits).",
    ),
    FieldOption("federation.selection", "Model selection: best (validation macro-AUC) or last."),
    FieldOption(
        "federation.patience",
        "Stop once validation macro-AUC has not improved for this many rounds "
        "(--rounds is then the maximum).",
    ),
    FieldOption(
        "federation.threshold_rule",
        "How each class's operating threshold is chosen on validation (never test): "
        "f1 (maximise F1), youden (sensitivity + specificity - 1) or sensitivity:S "
        "(the highest threshold reaching sensitivity S, e.g. sensitivity:0.9).",
    ),
    FieldOption("federation.threads", "Torch CPU threads (default: torch's choice)."),
    FieldOption(
        "data.cv_folds",
        "Patient-grouped K-fold cross-validation over the whole data set (K >= 2): one run per "
        "fold, pooled out-of-fold metrics with patient-bootstrap intervals and baselines in "
        "RUN/cv.json (docs/evaluation.md); not for --dataset dicom. Without it: the fixed "
        "train/val/test split.",
        name="cv",
    ),
    FieldOption(
        "data.group_by",
        "--cv: the labels file's column naming the patient (default: 'Patient ID' when "
        "present, else each image alone; digits: their own groups).",
    ),
    FieldOption(
        "data.cv_seed",
        "--cv: seed of the data plan (folds, site ownership, validation parts); runs with "
        "the same cv_seed share folds and can be compared (clinfl cv compare).",
    ),
    FieldOption(
        "federation.training",
        "federated, or local (--cv only): each site trains alone on its own patients and "
        "scores its own held-out patients (the baseline of what a site gains by joining); a "
        "site whose own patients hold no finding with both outcomes is not run and its images "
        "get the no-skill score 0.5 (cv.json lists it).",
    ),
    FieldOption(
        "federation.device",
        "Where sites train and evaluate: cpu (default), auto (CUDA when present), "
        "cuda or cuda:N. Updates, masks and ledgers stay on the CPU; DP-SGD needs cpu.",
    ),
    FieldOption(
        "secagg.min_sites",
        "Fewest sites whose sum may be revealed, as the coordinator asks it (a site's "
        "policy may require more) (default: the sites' policies, or 3).",
        name="secagg_min_sites",
    ),
    FieldOption(
        "secagg.max_colluders",
        "Sites assumed to collude with a malicious coordinator (c). The threshold is "
        "then t > (h + c) / 2 and a sum needs min_sites + c survivors; a site's policy may "
        "assume more.",
        name="secagg_max_colluders",
    ),
    FieldOption("secagg.bits", "Modulus of the masked sums: 2**bits.", name="secagg_bits"),
    FieldOption(
        "secagg.clip",
        "Per-coordinate clip of a site's update before quantisation.",
        name="secagg_clip",
    ),
    FieldOption(
        "privacy.policy",
        "Site policy TOML applied to every site (see policies/). With DP-SGD required, "
        "sites train with Opacus and keep a privacy ledger. Default: no DP.",
    ),
    FieldOption(
        "privacy.policy_dir", "Folder with one policy per site: site-1.toml, site-2.toml, ..."
    ),
    FieldOption(
        "privacy.grad_sample_mode",
        "Opacus per-sample-gradient mode: auto (fastest measured for the image size), "
        "hooks, ew, ghost, mixed-ghost (ghost clipping with ghost norms for the "
        "convolutions), bookkeeping (mixed-ghost's norms and clipped update in one "
        "backward pass) or functorch.",
        name="dp_mode",
    ),
)


@with_field_options(RUN_OPTIONS)
def simulate(
    ctx: typer.Context,
    *,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Federation config file (TOML, tables \\[data] \\[method] \\[federation] "
            "\\[secagg] \\[privacy] \\[\\[drops]]); it replaces the run options, so only "
            "--out, --json and --threads may go with it.",
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
    fields: FieldValues,  # stands for RUN_OPTIONS: --dataset ... --dp-mode
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
    drop: Annotated[
        list[str] | None,
        typer.Option(
            help="Inject a dropout: SITE:STAGE or SITE:STAGE:ROUND, stages "
            f"{', '.join(DROP_STAGES)} (repeatable)."
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
        elif config_file is not None:
            config = _config_from_file(ctx, config_file)
        else:
            sites: int = fields["federation.sites"]
            config = fields.run_config(
                {
                    "secagg.enabled": secagg == "on",
                    "secagg.degree": max(sites - 1, 1) if secagg_graph == "complete" else None,
                },
                drops=tuple(parse_dropout(text) for text in drop or ()),
            )
        method = config.method.name
        threads: int | None = fields["federation.threads"]
        if threads is not None:
            torch.set_num_threads(threads)
        run_dir = out or Path("runs") / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not as_json and (hint := dp_from_scratch_hint(config)) is not None:
            console.print(f"[yellow]note: {escape(hint)}[/]")
        if config.data.cv_folds is not None:
            _cross_validate(console, config, run_dir, resume=resume is not None, as_json=as_json)
            return
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
