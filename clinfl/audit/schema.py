"""The audit documents' shapes: a site's ``audit_report.json`` and ``federation_report.json``.

:func:`site_agent.audit_report.build_site_report` fills a :class:`SiteReport`,
:func:`site_agent.audit_report.shareable_summary` a :class:`SiteSummary` (only the keys the
site's policy lets leave it), :func:`coordinator.federation_report.build_federation_report` a
:class:`FederationReport`; :mod:`clinfl.audit.render` renders them. The documents are JSON: a
field added here is written and rendered; docs/privacy.md describes them.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class PolicySection(TypedDict):
    """The policy a site trained under: its file name (no folder), hash and terms."""

    source: str
    sha256: str
    terms: dict[str, Any]
    """The recorded policy's terms, as the site's policy file gave them (free-form TOML)."""


class Forecast(TypedDict):
    """How many more rounds at the last counted round's spend fit in the budget."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_round: float
    rounds_more: int
    capped: bool
    """``rounds_more`` is a lower bound: the count stopped at ``round_cap``."""
    round_cap: int
    epsilon_after: float


class DPSection(TypedDict):
    """The site's DP-SGD terms and spend."""

    enabled: bool
    epsilon_budget: float | None
    delta: float
    accountant: str
    epsilon_spent: float
    grad_sample_modes: list[str]
    forecast: Forecast | None


class LedgerRoundEntry(TypedDict):
    """One ledger row with the epsilon it charged and the cumulative epsilon after it."""

    run_id: str
    round: int
    state: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    grad_sample_mode: str
    secure_aggregation: bool | None
    sites_in_sum: int | None
    accountant: str
    epsilon_round: float
    epsilon_cumulative: float


class RefusalEntry(TypedDict):
    """A round the site refused, retried or failed to train, with the reason."""

    run_id: str
    round: int
    reason: str


class DataSection(TypedDict):
    """How many samples the site trained on, and its ingestion summary (None: no ingestion)."""

    training_samples: int
    ingestion: dict[str, Any] | None


class EvaluationEntry(TypedDict):
    """One federated evaluation the site scored a model for, and its noise's epsilon."""

    run_id: str
    round: int
    epsilon: float | None


class LocalThresholdsSection(TypedDict):
    """Thresholds the site fitted on its own validation studies (never sent anywhere)."""

    rule: str
    run_id: str
    round: int | None
    weights_sha256: str
    validation_studies: int
    validation_images: int
    thresholds: dict[str, float]
    flagged: list[str]
    """Classes without a validation positive at the site: they keep 0.5."""
    fitted_at: str
    sent: str
    """Always ``never``: the thresholds and what they were fitted on stay at the site."""


class SiteReport(TypedDict):
    """A site's ``audit_report.json``."""

    report_version: int
    site_id: str
    policy: PolicySection
    dp: DPSection
    rounds: list[LedgerRoundEntry]
    rounds_completed: int
    refusals: list[RefusalEntry]
    warnings: list[str]
    data: DataSection
    evaluations: NotRequired[list[EvaluationEntry]]
    """Each federated evaluation (its own line, apart from DP-SGD's epsilon)."""
    local_thresholds: NotRequired[LocalThresholdsSection | None]
    """None: no local thresholds fitted (``clinfl model predict --thresholds local``)."""


class SiteSummary(TypedDict):
    """What a site's policy (``reporting.metrics``) lets leave it for the federation report."""

    site_id: str
    reports: list[str]
    epsilon_spent: NotRequired[float]
    epsilon_budget: NotRequired[float | None]
    delta: NotRequired[float]
    dp_enabled: NotRequired[bool]
    epsilon_by_round: NotRequired[list[tuple[int, float]]]
    training_samples: NotRequired[int]
    rounds_trained: NotRequired[int]
    refusals: NotRequired[int]
    ingestion: NotRequired[dict[str, Any]]


class FederationRound(TypedDict):
    """One round as the federation report lists it."""

    round: int
    sites: int
    macro_auc: float
    val_macro_auc: float
    aborted: str | None


class FederationReport(TypedDict):
    """The coordinator's ``federation_report.json``."""

    report_version: int
    run_id: str
    stopped: str | None
    rounds: list[FederationRound]
    sites: list[SiteSummary]
