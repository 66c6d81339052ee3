"""Site and federation audit reports as JSON, Markdown or one self-contained HTML file.

The HTML embeds its plot as a data URI and its style inline: it opens in a browser with no
network access (no scripts, no fonts, no external resources).
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from clinfl.audit.plot import epsilon_plot
from clinfl.audit.schema import (
    DPSection,
    EvaluationEntry,
    FederationReport,
    LocalThresholdsSection,
    SiteReport,
)

FORMATS = ("json", "md", "html")


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def forecast_text(dp: DPSection) -> str:
    """Return the site report's forecast in words: N more rounds at the last round's spend."""
    ahead = dp.get("forecast")
    if ahead is None:
        return "no round charged yet" if dp["enabled"] else "n/a (no DP-SGD)"
    more = ahead["rounds_more"]
    count = f"at least {more}" if ahead["capped"] else str(more)
    return (
        f"{count} more round(s) fit in the budget at the last round's spend (noise "
        f"{_fmt(ahead['noise_multiplier'])}, sample rate {_fmt(ahead['sample_rate'])}, "
        f"{ahead['steps']} steps: epsilon {_fmt(ahead['epsilon_round'])} for one such round "
        f"alone), reaching epsilon {_fmt(ahead['epsilon_after'])}"
    )


def evaluation_text(evaluations: list[EvaluationEntry]) -> str:
    """Return the summary of a site's federated evaluations and their noise's epsilon."""
    if not evaluations:
        return "none"
    noisy = [e["epsilon"] for e in evaluations if e["epsilon"] is not None]
    text = f"{len(evaluations)} scored, histograms sent only masked"
    if not noisy:
        return text + "; no evaluation noise"
    return (
        f"{text}; evaluation noise on {len(noisy)}: epsilon {_fmt(sum(noisy))} in total (pure "
        "DP, summed per evaluation; not included in the DP-SGD epsilon above)"
    )


NO_LOCAL_THRESHOLDS = (
    "none fitted at this site (`clinfl model predict --state STATE --thresholds local` fits "
    "them on this site's validation studies; they never leave the site)"
)


def local_thresholds_rows(local: LocalThresholdsSection | None) -> list[list[str]]:
    """The site report's local operating points as (item, value) rows."""
    if local is None:
        return [["local thresholds", NO_LOCAL_THRESHOLDS]]
    rows = [
        ["local thresholds", "fitted at this site, kept in its state folder, never sent"],
        ["rule", local["rule"]],
        [
            "model",
            f"run {local['run_id']}, round {_fmt(local['round'])} (weights sha256 "
            f"{local['weights_sha256'][:16]})",
        ],
        [
            "validation studies",
            f"{local['validation_studies']} ({local['validation_images']} images)",
        ],
        ["fitted at", local["fitted_at"]],
        ["kept at 0.5 (no validation positive)", ", ".join(local["flagged"]) or "none"],
    ]
    return rows + [[f"threshold: {name}", _fmt(t)] for name, t in local["thresholds"].items()]


def _site_tables(report: SiteReport) -> list[tuple[str, list[str], list[list[str]]]]:
    dp = report["dp"]
    terms = report["policy"]["terms"]
    summary = [
        ["site", report["site_id"]],
        ["policy", f"{report['policy']['source']} (sha256 {report['policy']['sha256'][:16]})"],
        ["DP-SGD", "on" if dp["enabled"] else "off"],
        ["epsilon spent / budget", f"{_fmt(dp['epsilon_spent'])} / {_fmt(dp['epsilon_budget'])}"],
        ["delta", _fmt(dp["delta"])],
        ["accountant", dp["accountant"]],
        ["per-sample-gradient mode", ", ".join(dp["grad_sample_modes"]) or "n/a"],
        [
            "secure aggregation",
            f"{'required' if terms.get('secagg', {}).get('required') else 'optional'}, sums over "
            f">= {terms.get('secagg', {}).get('min_sites', '?')} sites",
        ],
        ["forecast", forecast_text(dp)],
        ["training samples", _fmt(report["data"]["training_samples"])],
        ["rounds completed", _fmt(report.get("rounds_completed"))],
        [
            "metrics that may leave the site",
            ", ".join(terms.get("reporting", {}).get("metrics", [])),
        ],
        ["federated evaluations", evaluation_text(report.get("evaluations", []))],
    ]
    rounds = [
        [
            r["run_id"],
            _fmt(r["round"]),
            r["state"],
            _fmt(r["epsilon_round"]),
            _fmt(r["epsilon_cumulative"]),
            _fmt(r["noise_multiplier"]),
            _fmt(r["sample_rate"]),
            _fmt(r["steps"]),
            r.get("accountant", dp["accountant"]),
            r["grad_sample_mode"],
            _fmt(r["secure_aggregation"]),
            _fmt(r["sites_in_sum"]),
        ]
        for r in report["rounds"]
    ]
    refusals = [[r["run_id"], _fmt(r["round"]), r["reason"]] for r in report["refusals"]]
    evaluations = [
        [e["run_id"], _fmt(e["round"]), "none" if e["epsilon"] is None else _fmt(e["epsilon"])]
        for e in report.get("evaluations", [])
    ]
    ingestion = report["data"]["ingestion"]
    ingest_rows = (
        [[str(k), _fmt(v)] for k, v in ingestion.items() if not isinstance(v, dict)]
        + [
            [f"quarantined: {reason}", _fmt(count)]
            for reason, count in (ingestion.get("quarantined") or {}).items()
        ]
        if ingestion
        else [["ingestion", "no DICOM ingestion for this run (image arrays given directly)"]]
    )
    return [
        ("Summary", ["item", "value"], summary),
        (
            "Rounds",
            [
                "run",
                "round",
                "state",
                "epsilon (round)",
                "epsilon (cumulative)",
                "noise",
                "sample rate",
                "steps",
                "charged by",
                "grad mode",
                "secure agg.",
                "sites in sum",
            ],
            rounds,
        ),
        ("Refusals, retries and training failures", ["run", "round", "reason"], refusals),
        (
            "Federated evaluations (masked histograms; noise epsilon apart from DP-SGD's)",
            ["run", "round", "evaluation noise epsilon"],
            evaluations,
        ),
        ("Warnings", ["warning"], [[w] for w in report["warnings"]]),
        ("Data", ["item", "value"], ingest_rows),
        (
            "Local operating points",
            ["item", "value"],
            local_thresholds_rows(report.get("local_thresholds")),
        ),
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Return ``rows`` under ``header`` as Markdown table lines, pipes in cells escaped."""
    if not rows:
        return ["(none)"]
    clean = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    return [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        *("| " + " | ".join(row) + " |" for row in clean),
    ]


def _plot_png(report: SiteReport) -> bytes:
    counted = [r["epsilon_cumulative"] for r in report["rounds"] if r["state"] != "released"]
    return epsilon_plot(
        [(report["site_id"], counted)],
        budget=report["dp"]["epsilon_budget"] if report["dp"]["enabled"] else None,
        title=f"{report['site_id']}: cumulative epsilon at delta {report['dp']['delta']:g}",
    )


def site_markdown(report: SiteReport) -> str:
    """Return the site report as Markdown (the plot is left to the HTML form)."""
    out = [f"# Privacy audit report: {report['site_id']}", ""]
    for title, header, rows in _site_tables(report):
        out += [f"## {title}", "", *markdown_table(header, rows), ""]
    return "\n".join(out)


PAGE_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left;font-size:.9em}"
    "th{background:#eee}"
)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """Return ``rows`` under ``header`` as an HTML table, every cell escaped."""
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_page(title: str, sections: list[str], png: bytes) -> str:
    image = base64.b64encode(png).decode()
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<img id="epsilon-plot" alt="cumulative epsilon against the budget" '
        f'src="data:image/png;base64,{image}">' + "".join(sections) + "</body></html>"
    )


def site_html(report: SiteReport) -> str:
    """Return the site report as one self-contained HTML page with the epsilon plot."""
    sections = [
        f"<h2>{html.escape(title)}</h2>{html_table(header, rows)}"
        for title, header, rows in _site_tables(report)
    ]
    return _html_page(f"Privacy audit report: {report['site_id']}", sections, _plot_png(report))


def render_site(report: SiteReport, fmt: str) -> str:
    """Render a site report in ``fmt`` (json, md or html).

    Raises:
        ValueError: for an unknown format.
    """
    if fmt == "json":
        return json.dumps(report, indent=2)
    if fmt == "md":
        return site_markdown(report)
    if fmt == "html":
        return site_html(report)
    raise ValueError(f"unknown format {fmt!r}: use json, md or html")


def _federation_tables(report: FederationReport) -> list[tuple[str, list[str], list[list[str]]]]:
    sites = [
        [
            s["site_id"],
            _fmt(s.get("dp_enabled")),
            _fmt(s.get("epsilon_spent")),
            _fmt(s.get("epsilon_budget")),
            _fmt(s.get("training_samples")),
            _fmt(s.get("rounds_trained")),
            _fmt(s.get("refusals")),
            ", ".join(s["reports"]) or "nothing",
        ]
        for s in report["sites"]
    ]
    rounds = [
        [
            _fmt(r["round"]),
            _fmt(r["sites"]),
            _fmt(r["macro_auc"]),
            _fmt(r["val_macro_auc"]),
            r.get("aborted") or "",
        ]
        for r in report["rounds"]
    ]
    return [
        (
            "Sites (what each site's policy lets it report)",
            [
                "site",
                "DP",
                "epsilon spent",
                "budget",
                "samples",
                "rounds trained",
                "refusals",
                "reports",
            ],
            sites,
        ),
        (
            "Rounds",
            ["round", "sites in sum", "test macro-AUC", "val macro-AUC", "abandoned"],
            rounds,
        ),
    ]


def federation_markdown(report: FederationReport) -> str:
    """Return the federation report as Markdown."""
    out = [f"# Federation report: {report['run_id']}", ""]
    if report.get("stopped"):
        out += [f"The federation {report['stopped']}", ""]
    for title, header, rows in _federation_tables(report):
        out += [f"## {title}", "", *markdown_table(header, rows), ""]
    return "\n".join(out)


def federation_html(report: FederationReport) -> str:
    """Return the federation report as one self-contained HTML page."""
    series = [
        (s["site_id"], [eps for _, eps in s["epsilon_by_round"]])
        for s in report["sites"]
        if s.get("epsilon_by_round")
    ]
    budgets = [
        budget
        for s in report["sites"]
        if s.get("dp_enabled") and (budget := s.get("epsilon_budget")) is not None
    ]
    png = epsilon_plot(
        series, budget=min(budgets) if budgets else None, title="cumulative epsilon per site"
    )
    stopped = report["stopped"]
    sections = [f"<p>The federation {html.escape(stopped)}</p>"] if stopped else []
    sections += [
        f"<h2>{html.escape(title)}</h2>{html_table(header, rows)}"
        for title, header, rows in _federation_tables(report)
    ]
    return _html_page(f"Federation report: {report['run_id']}", sections, png)
