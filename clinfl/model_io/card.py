"""The model card of a model folder, as JSON, Markdown, or one self-contained HTML page.

Everything comes from the folder: provenance (method, sites, rounds, the label space with its
classes in output order and its digest, image size, the initial weights training started from
and their SHA-256),
per-class test AUC with its bootstrap 95% interval, the operating thresholds with test
sensitivity and specificity at each, each site's epsilon where its report shared it, and the
secure-aggregation settings. The HTML embeds its plot as a data URI (no network, no scripts).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from clinfl.audit.plot import png_bytes
from clinfl.audit.render import PAGE_STYLE, html_table, markdown_table
from clinfl.errors import ConfigError
from clinfl.model_io.bundle import ModelBundle
from clinfl.secagg.graph import round_degree, sparse_degree
from clinfl.weights.provenance import WeightsDocument

CARD_FORMATS = {".json": "json", ".md": "md", ".html": "html"}
INTENDED_USE = (
    "A research model trained by federated learning. It is not a medical device and not a "
    "diagnostic tool: its outputs must not guide the care of any patient. Use it to study "
    "federated training, label skew and thresholds on your own retrospective data."
)
LIMITATIONS = (
    "Test metrics come from the run's own held-out split, which shares its sources and label "
    "noise with the training data; they say little about another hospital, scanner or "
    "population. Thresholds were chosen on the run's validation split; a class flagged there had "
    "no validation positive and keeps 0.5. Confidence intervals cover sampling of test images "
    "only, not the variation between training runs."
)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}"


def describe_init_weights(record: WeightsDocument | None) -> str:
    """Return one line naming the initial weights: what, where from, and their SHA-256."""
    if record is None:
        return "random (no pretrained start)"
    what = record["name"] or record["file"] or "unnamed"
    sha = record["sha256"] or "not recorded by the coordinator"
    return f"{what}: {record['source']}; SHA-256 {sha}"


def build_card(bundle: ModelBundle) -> dict[str, Any]:
    """Return the model card's content as JSON types."""
    prov, thresholds = bundle.provenance, bundle.thresholds
    per_class_auc = (prov.get("test") or {}).get("per_class_auc") or {}
    classes = []
    for name in bundle.class_names:
        entry = thresholds["classes"][name]
        classes.append(
            {
                "class": name,
                "test_auc": per_class_auc.get(name),
                "test_auc_ci95": entry.get("test_auc_ci"),
                "threshold": entry["threshold"],
                "flagged": entry["flagged"],
                "test_sensitivity": entry.get("test_sensitivity"),
                "test_specificity": entry.get("test_specificity"),
            }
        )
    return {
        "model": {
            "method": bundle.method.name,
            "label_space": bundle.label_space,
            "classes": list(bundle.class_names),
            "label_space_digest": bundle.space.digest,
            "image_size": bundle.image_size,
            "etf_seed": "included" if bundle.federation_seed is not None else "omitted",
            "init_weights": bundle.init_weights,
        },
        "provenance": {
            k: prov.get(k)
            for k in (
                "run_id",
                "dataset",
                "data",
                "sites",
                "samples_per_site",
                "rounds_configured",
                "rounds_run",
                "selected_round",
                "selection",
                "clinfl_version",
            )
        },
        "test": {k: (prov.get("test") or {}).get(k) for k in ("macro_auc", "micro_auc")},
        "f1": thresholds.get("test_f1", {}),
        "threshold_rule": thresholds.get("rule"),
        "thresholds_chosen_on": thresholds.get("chosen_on"),
        "interval": thresholds.get("interval", "bootstrap 95%"),
        "classes": classes,
        "privacy": prov.get("privacy", []),
        "secure_aggregation": prov.get("secure_aggregation"),
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }


def secagg_rows(settings: dict[str, Any], sites: Any) -> list[list[str]]:
    """Return the secure-aggregation settings as card rows, the graph degree in words.

    The configured degree is a proposal (None: derived from the number of sites); the card
    shows the degree the rounds use, and "complete" when every pair of sites masks.
    """
    rows = []
    for key, value in settings.items():
        text = json.dumps(value)
        if key == "degree" and isinstance(sites, int) and sites >= 2:
            proposed = sparse_degree(sites) if value is None else int(value)
            degree = round_degree(sites, proposed=proposed)
            text = "complete" if degree >= sites - 1 else f"{degree} (SecAgg+ neighbour graph)"
        rows.append([str(key), text])
    return rows


def _tables(card: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    model, prov, f1 = card["model"], card["provenance"], card["f1"]
    summary = [
        ["method", model["method"]],
        ["label space", f"{model['label_space']} ({len(card['classes'])} classes)"],
        ["classes (output order)", ", ".join(model["classes"])],
        ["label-space digest (SHA-256)", model["label_space_digest"]],
        ["image size", f"{model['image_size']} px"],
        ["initial weights", describe_init_weights(model.get("init_weights"))],
        ["data", str(prov.get("data"))],
        ["sites", str(prov.get("sites"))],
        ["rounds", f"{prov.get('rounds_run')} run of {prov.get('rounds_configured')}"],
        ["selected round", f"{prov.get('selected_round')} ({prov.get('selection')})"],
        ["test macro / micro AUC (%)", f"{_pct(card['test']['macro_auc'])} / "
         f"{_pct(card['test']['micro_auc'])}"],
        ["test macro / micro F1 at 0.5 (%)", f"{_pct(f1.get('macro_at_0.5'))} / "
         f"{_pct(f1.get('micro_at_0.5'))}"],
        ["test macro / micro F1 at the thresholds (%)", f"{_pct(f1.get('macro_at_thresholds'))}"
         f" / {_pct(f1.get('micro_at_thresholds'))}"],
        ["threshold rule", f"{card['threshold_rule']} (chosen on {card['thresholds_chosen_on']})"],
        ["ETF seed in the folder", model["etf_seed"]],
        ["run", str(prov.get("run_id"))],
    ]  # fmt: skip
    classes = [
        [
            c["class"],
            _pct(c["test_auc"]),
            "n/a" if not c["test_auc_ci95"] else
            f"{_pct(c['test_auc_ci95'][0])}-{_pct(c['test_auc_ci95'][1])}",
            f"{c['threshold']:.4g}" + (" (flagged: no validation positive)" * c["flagged"]),
            _pct(c["test_sensitivity"]),
            _pct(c["test_specificity"]),
        ]
        for c in card["classes"]
    ]  # fmt: skip
    privacy = [
        [
            str(p["site"]),
            "shared by the site" if "epsilon" in p.get("shared", []) else "kept at the site",
            "n/a" if p.get("epsilon_spent") is None else f"{p['epsilon_spent']:.4g}",
            "n/a" if p.get("epsilon_budget") is None else f"{p['epsilon_budget']:.4g}",
            "on" if p.get("dp_enabled") else "off" if p.get("dp_enabled") is False else "n/a",
        ]
        for p in card["privacy"]
    ]
    secagg = secagg_rows(card["secure_aggregation"] or {}, prov.get("sites"))
    return [
        ("Model and provenance", ["item", "value"], summary),
        (
            f"Per class: test AUC ({card.get('interval', 'bootstrap 95%')} CI) and the operating "
            "threshold",
            ["class", "AUC %", "95% CI", "threshold", "sensitivity %", "specificity %"],
            classes,
        ),
        ("Privacy: epsilon spent per site", ["site", "epsilon", "spent", "budget", "DP-SGD"],
         privacy),
        ("Secure aggregation", ["setting", "value"], secagg),
    ]  # fmt: skip


def card_markdown(card: dict[str, Any]) -> str:
    """Return the card as Markdown."""
    out = [f"# Model card: {card['model']['method']} ({card['model']['label_space']})", ""]
    out += ["## Intended use", "", card["intended_use"], ""]
    for title, header, rows in _tables(card):
        out += [f"## {title}", "", *markdown_table(header, rows), ""]
    out += ["## Limitations", "", card["limitations"], ""]
    return "\n".join(out)


def auc_plot(card: dict[str, Any]) -> bytes:
    """Return a PNG of per-class test AUC with its 95% interval (blue) and chance (grey)."""
    rows = [c for c in card["classes"] if c["test_auc"] is not None]
    figure, axes = plt.subplots(figsize=(6.4, 0.3 * max(len(rows), 4) + 1.2), dpi=100)
    try:
        for y, c in enumerate(rows):
            low, high = c["test_auc_ci95"] or (c["test_auc"], c["test_auc"])
            axes.plot([low, high], [y, y], color="#1f4fd1", linewidth=3)
            axes.plot([c["test_auc"]], [y], "o", color="#1f4fd1", markersize=7)
        axes.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        axes.set_yticks(range(len(rows)), [c["class"] for c in rows])
        axes.set_xlim(0, 1)
        axes.set_xlabel("test ROC-AUC (bootstrap 95% interval)")
        axes.grid(alpha=0.3, axis="x")
        return png_bytes(figure)
    finally:
        plt.close(figure)


_STYLE = PAGE_STYLE + ".use{border-left:4px solid #c00;padding-left:1em}"


def card_html(card: dict[str, Any]) -> str:
    """Return the card as one self-contained HTML page with its AUC plot."""
    title = f"Model card: {card['model']['method']} ({card['model']['label_space']})"
    image = base64.b64encode(auc_plot(card)).decode()
    sections = "".join(
        f"<h2>{html.escape(t)}</h2>{html_table(header, rows)}" for t, header, rows in _tables(card)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="use"><strong>Intended use.</strong> {html.escape(card["intended_use"])}</p>'
        f'<img id="auc-plot" alt="per-class test AUC with 95% intervals" '
        f'src="data:image/png;base64,{image}">'
        f"{sections}<h2>Limitations</h2><p>{html.escape(card['limitations'])}</p></body></html>"
    )


def card_format(out: Path) -> str:
    """Return the card format an output path asks for by its suffix.

    Raises:
        ConfigError: for a suffix other than .html, .md or .json.
    """
    fmt = CARD_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {out} must end in .html, .md or .json", remedy="--out card.html")
    return fmt


def render_card(card: dict[str, Any], fmt: str) -> str:
    """Render ``card`` as ``json``, ``md`` or ``html``."""
    if fmt == "json":
        return json.dumps(card, indent=2)
    return card_markdown(card) if fmt == "md" else card_html(card)
