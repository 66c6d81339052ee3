"""Rich renderings: the site-by-class table, the per-round table, progress bars."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from clinfl.config import FederationConfig
from clinfl.data.imageset import SplitData
from clinfl.data.partition import Partition
from clinfl.federation.messages import RoundRecord
from clinfl.simulation.local_steps import DerivedLocalSteps


def partition_table(partition: Partition, class_names: tuple[str, ...]) -> Table:
    """Return the site-by-class positive-count table (the paper's figures 8-11 as text).

    Classes are rows and sites columns, so 14 classes fit an 80-column terminal.
    """
    table = Table(title=f"Label-skew partition (dropped samples: {partition.dropped})")
    table.add_column("class")
    for site in range(partition.counts.shape[0]):
        table.add_column(f"site-{site + 1}", justify="right")
    for k, name in enumerate(class_names):
        table.add_row(name, *(str(int(v)) if v else "." for v in partition.counts[:, k]))
    table.add_row("(no label)", *(str(int(v)) for v in partition.no_label), end_section=True)
    table.add_row("samples", *(str(int(v)) for v in partition.samples))
    return table


def rounds_table(records: tuple[RoundRecord, ...], selected_round: int, method: str) -> Table:
    """Return one row per round with the test metrics; the selected round is marked."""
    table = Table(
        title=f"{method}: global model on the test set (* = selected on validation, ! = abandoned)",
        caption="F1 @0.5: threshold 0.5; F1 @thr: per-class thresholds chosen on validation",
    )
    columns = ["round", "macro AUC", "micro AUC", "macro F1 @0.5", "micro F1 @0.5"]
    columns += ["macro F1 @thr", "micro F1 @thr", "val macro AUC", "s"]
    table.box = box.SIMPLE_HEAD  # no vertical rules: nine columns fit 80 characters
    for column in columns:
        table.add_column(column, justify="right")
    for record in records:
        test, operating = record.report.test, record.report.operating
        mark = "*" if record.round == selected_round else ("!" if record.aborted else "")
        table.add_row(
            f"{record.round}{mark}",
            f"{100 * test.macro_auc:.2f}",
            f"{100 * test.micro_auc:.2f}",
            f"{100 * test.macro_f1:.2f}",
            f"{100 * test.micro_f1:.2f}",
            "-" if operating is None else f"{100 * operating.macro_f1:.2f}",
            "-" if operating is None else f"{100 * operating.micro_f1:.2f}",
            f"{100 * record.report.validation.macro_auc:.2f}",
            f"{record.seconds:.1f}",
        )
    return table


def progress_bar(console: Console) -> Progress:
    """Return the CLI's progress display: description, bar, done/total, elapsed (transient)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


class ProgressListener:
    """Draws a rounds bar and a local-training bar while a simulation runs."""

    def __init__(self, console: Console, *, show_tables: bool) -> None:
        self._console = console
        self._show_tables = show_tables
        self._progress = progress_bar(console)
        self._rounds = self._progress.add_task("rounds", total=None)
        self._steps = self._progress.add_task("local training", total=None)
        self._site: str | None = None
        self._folds: TaskID | None = None

    def fold(self, done: int, total: int, label: str) -> None:
        """Advance the folds bar of a cross-validated run (``label``: the part starting)."""
        if self._folds is None:
            self._folds = self._progress.add_task("folds", total=total)
        self._progress.update(self._folds, completed=done, description=f"cross-validation: {label}")

    def __enter__(self) -> ProgressListener:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def images_read(self, done: int, total: int) -> None:
        """Advance a bar while images are decoded."""
        self._progress.update(
            self._steps, description="reading images", total=total, completed=done
        )

    def data_loaded(self, data: SplitData, partition: Partition) -> None:
        """Print the data description and the partition table."""
        if self._show_tables:
            self._console.print(data.description)
            self._console.print(partition_table(partition, data.train.class_names))

    def site_step(self, site_id: str, step: int, total: int) -> None:
        """Advance the local-training bar."""
        if site_id != self._site or step == 1:
            self._site = site_id
            self._progress.reset(self._steps, total=total, description=f"{site_id} training")
        self._progress.update(self._steps, completed=step)

    def round_finished(self, record: RoundRecord, total_rounds: int) -> None:
        """Advance the rounds bar and print a one-line round summary."""
        self._progress.update(self._rounds, total=total_rounds, completed=record.round)
        if self._show_tables and record.aborted:
            self._console.print(
                f"round {record.round}/{total_rounds}: [bold red]abandoned[/]: "
                f"{escape(record.aborted)}"
            )
        elif self._show_tables:
            test = record.report.test
            ladm = record.report.model_diagnostics
            attention = (
                ""
                if not ladm
                else f", LADM attention entropy {ladm['attention_entropy']:.3f}"
                f"/{ladm['uniform_entropy']:.3f}, class-feature cosine "
                f"{ladm['class_feature_cosine']:.3f}"
            )
            self._console.print(
                f"round {record.round}/{total_rounds}: test macro-AUC {100 * test.macro_auc:.2f}, "
                f"val macro-AUC {100 * record.report.validation.macro_auc:.2f}{attention} "
                f"({record.sites} sites, {record.seconds:.1f}s)"
            )

    def local_steps_derived(self, derived: DerivedLocalSteps, federation: FederationConfig) -> None:
        """Print the local steps the simulation derived (with --json too: the console is stderr)."""
        self._console.print(f"[bold]local steps[/]: {escape(derived.describe(federation))}")

    def site_audit(self, site_id: str, message: str) -> None:
        """Print a site's refusal (what it also writes to its audit log)."""
        if self._show_tables:
            self._console.print(f"[yellow]{escape(site_id)} refused[/]: {escape(message)}")
