"""Messages exchanged in a round, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clinfl.config import FederationConfig
from clinfl.config.presets import or_library_default
from clinfl.federation.results_schema import RoundEntry
from clinfl.metrics import MultiLabelMetrics
from clinfl.thresholds import OperatingPoint
from clinfl.typing import StateDict


@dataclass(frozen=True)
class RoundSettings:
    """What the coordinator asks of a site for one round.

    With ``local_steps`` set the site takes exactly that many optimiser steps (its work does
    not depend on its size) and ``local_epochs`` is unused; without it, ``local_epochs`` epochs.
    """

    round: int
    local_epochs: int
    batch_size: int
    lr: float
    local_steps: int | None = None

    @classmethod
    def for_round(cls, federation: FederationConfig, round_number: int) -> RoundSettings:
        """Return round ``round_number``'s settings from the federation's configuration."""
        return cls(
            round=round_number,
            local_epochs=federation.local_epochs,
            batch_size=federation.batch_size,
            lr=or_library_default(federation.lr, "federation.lr"),
            local_steps=federation.local_steps,
        )


@dataclass(frozen=True)
class TrainingReport:
    """What a site says after local training: that it trained, and nothing about its data.

    No loss, step count or sample count travels here (SECAGG.md, "Version 2", R7): the loss and
    the sample weight ride inside the masked vector. ``epsilon_spent`` is the site's cumulative
    privacy spend, present only when it trains with DP-SGD and its policy's
    ``reporting.metrics`` includes ``epsilon`` (a budget figure the site chose to disclose; it
    depends on the site's sampling rate, so a policy that keeps sample counts private should
    not list ``epsilon``).
    """

    site_id: str
    epsilon_spent: float | None = None


@dataclass(frozen=True)
class SiteContribution:
    """A plain (unmasked) upload: ``weighted_delta = w_i * (w_local - w_global)`` and ``w_i``.

    Sent only when secure aggregation is off and the site's policy allows it. ``w_i`` is the
    sample count capped by the policy (1 when the policy keeps counts at the site), and
    ``mean_loss`` is present only when the policy lets the loss leave. Only travelling tensors
    appear; the ETF never does.
    """

    site_id: str
    weighted_delta: StateDict
    weight: int
    mean_loss: float | None = None


@dataclass(frozen=True)
class EvaluationReport:
    """The global model's metrics on the validation and test sets.

    ``operating`` holds per-class thresholds chosen on validation and the test F1 at them
    (None from an evaluator that does not choose thresholds). ``model_diagnostics`` holds what
    the evaluator measured inside the model on validation images (LADM's attention entropy and
    class-feature cosine, :mod:`clinfl.model.diagnostics`; None for models without LADM).
    """

    validation: MultiLabelMetrics
    test: MultiLabelMetrics
    operating: OperatingPoint | None = None
    model_diagnostics: dict[str, float] | None = None


@dataclass(frozen=True)
class RoundRecord:
    """What the coordinator records after a round."""

    round: int
    report: EvaluationReport
    seconds: float
    sites: int
    num_samples: int
    mean_loss: float
    aborted: str | None = None

    def to_json_dict(self) -> RoundEntry:
        """Return the round's test metrics, validation macro-AUC and timing as JSON types."""
        test, operating = self.report.test, self.report.operating
        return {
            "round": self.round,
            "macro_auc": test.macro_auc,
            "micro_auc": test.micro_auc,
            "macro_f1": test.macro_f1,
            "micro_f1": test.micro_f1,
            "macro_f1_at_thresholds": None if operating is None else operating.macro_f1,
            "micro_f1_at_thresholds": None if operating is None else operating.micro_f1,
            "val_macro_auc": self.report.validation.macro_auc,
            "val_macro_f1": self.report.validation.macro_f1,
            "seconds": self.seconds,
            "sites": self.sites,
            "num_samples": self.num_samples,
            "mean_train_loss": self.mean_loss,
            "aborted": self.aborted,
            "model_diagnostics": self.report.model_diagnostics,
        }

    def to_full_json_dict(self) -> dict[str, Any]:
        """Return :meth:`to_json_dict` plus both metric sets in full (to rebuild the record)."""
        operating = self.report.operating
        return {
            **self.to_json_dict(),
            "report": {
                "validation": self.report.validation.to_json_dict(),
                "test": self.report.test.to_json_dict(),
                "operating": None if operating is None else operating.to_json_dict(),
            },
        }

    @classmethod
    def from_full_json_dict(cls, data: dict[str, Any]) -> RoundRecord:
        """Rebuild a record written by :meth:`to_full_json_dict`."""
        point = data["report"].get("operating")
        report = EvaluationReport(
            validation=MultiLabelMetrics.from_json_dict(data["report"]["validation"]),
            test=MultiLabelMetrics.from_json_dict(data["report"]["test"]),
            operating=None if point is None else OperatingPoint.from_json_dict(point),
            model_diagnostics=data.get("model_diagnostics"),
        )
        return cls(
            round=int(data["round"]),
            report=report,
            seconds=float(data["seconds"]),
            sites=int(data["sites"]),
            num_samples=int(data["num_samples"]),
            mean_loss=float(data["mean_train_loss"]),
            aborted=data.get("aborted"),
        )
