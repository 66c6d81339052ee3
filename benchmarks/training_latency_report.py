"""The training-latency section of docs/benchmarks.md (``benchmarks/training_latency.py``)."""

from __future__ import annotations

from typing import Any

MODE_NAMES = {"epochs": "by epochs (1 local epoch)", "fixed_steps": "fixed local steps"}


def _quiet(share: float | None) -> str:
    if share is None:
        return ""
    return f" Other processes used {100 * share:.1f}% of the machine's CPU while it timed."


def render_training_latency(results: dict[str, Any]) -> list[str]:
    """Return the section's Markdown lines (none without results)."""
    modes: dict[str, Any] = results.get("modes", {})
    if not modes:
        return []
    settings = results["settings"]
    sizes = [str(n) for n in settings["sizes"]]
    lines = [
        "## Training latency and the sample count (the timing channel)",
        "",
        f"`python benchmarks/training_latency.py`: plain sites (no DP) of "
        f"{', '.join(sizes)} digits composites at {settings['image_size']} px, FedAvg on the "
        f"ResNet-18 {settings['backbone']} stem at width {settings['width']}, batch "
        f"{settings['batch_size']}, the same global model on every call; "
        f"`SiteTrainer.train_round` timed {settings['reps']} times per site and mode, in a "
        "shuffled order, after one warm-up call per site. By epochs a round takes "
        f"ceil(N / {settings['batch_size']}) steps; with `local_steps = "
        f"{settings['local_steps']}` it takes that many full batches whatever N is. "
        '"N from latency" fits a line N ~ latency on the other sizes and predicts each '
        "held-out site's N (leave one size out) from one call, or from the median of its "
        "calls (a coordinator times a site every round); the guess is the other sizes' mean "
        "N, which uses no latency at all." + _quiet(results.get("other_processes_cpu_share")),
        "",
        "| mode | Pearson r (latency, N) | r of per-site medians | N from one call: mean abs. "
        "error | N from the median: mean abs. error | guess without latency: mean abs. error |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode, summary in modes.items():
        lines.append(
            f"| {MODE_NAMES.get(mode, mode)} | {summary['pearson_latency_vs_samples']:.3f} | "
            f"{summary['pearson_median_latency_vs_samples']:.3f} | "
            f"{summary['fit_mean_abs_error_samples']:.1f} | "
            f"{summary['median_fit_mean_abs_error_samples']:.1f} | "
            f"{summary['guess_mean_abs_error_samples']:.1f} |"
        )
    names = list(modes)
    header = " | ".join(f"{MODE_NAMES.get(m, m)}: steps | median s" for m in names)
    lines += [
        "",
        f"| N | {header} |",
        "| --- |" + " --- | --- |" * len(names),
    ]
    for n in sizes:
        cells = " | ".join(
            f"{modes[m]['per_size'][n]['steps']} | {modes[m]['per_size'][n]['median_seconds']:.3f}"
            for m in names
        )
        lines.append(f"| {n} | {cells} |")
    return lines
