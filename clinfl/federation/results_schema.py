"""The shape of ``results.json`` (written by :mod:`coordinator.results`, read by model export).

:class:`ResultsDocument` lists the keys in the file's order; docs/coordinator.md, "results.json",
describes each. :class:`RoundEntry` is :meth:`~clinfl.federation.messages.RoundRecord.to_json_dict`.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from clinfl.weights.provenance import WeightsDocument

Mode = Literal["simulation", "deployment"]


class RoundEntry(TypedDict):
    """One round's test metrics, validation macro-AUC and timing."""

    round: int
    macro_auc: float
    micro_auc: float
    macro_f1: float
    micro_f1: float
    macro_f1_at_thresholds: float | None
    micro_f1_at_thresholds: float | None
    val_macro_auc: float
    val_macro_f1: float
    seconds: float
    sites: int
    num_samples: int
    mean_train_loss: float
    aborted: str | None
    model_diagnostics: dict[str, float] | None


class BestRound(RoundEntry):
    """The selected round, with its per-class test AUC and how it was selected."""

    per_class_auc: dict[str, float | None] | None
    selection: str
    operating: dict[str, Any] | None
    """Its thresholds and their test rates, from the pooled histograms (None: unevaluated)."""


class SiteEntryDocument(TypedDict):
    """One site as ``results.json`` lists it (:class:`coordinator.results.SiteEntry`)."""

    policy: str | None
    state_dir: str | None
    joined: bool
    refusal: str | None


class ResultsDocument(TypedDict):
    """``results.json`` (:class:`coordinator.results.RunResults`, field for field)."""

    run_id: str
    mode: Mode
    method: str
    config: dict[str, Any]
    init_weights: WeightsDocument | None
    data: str | None
    partition: dict[str, object] | None
    rounds: list[RoundEntry]
    best: BestRound | None
    stopped: str | None
    converged: str | None
    seconds: float
    sites: dict[str, SiteEntryDocument]
    sites_joined: list[str]
    refusals: dict[str, str]
    grad_sample_mode: str | None
    reports: dict[str, str]
    evaluation: dict[str, Any] | None
