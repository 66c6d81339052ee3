"""The clinfl exception hierarchy.

Every error clinfl raises for a user-facing problem derives from :class:`ClinflError`. Each one
carries a ``remedy`` (what the user should do) and an ``exit_code`` that the CLI returns, so a
mistake in the input becomes one clear line and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ClinflError(Exception):
    """Root of every error clinfl raises on purpose.

    Attributes:
        message: what went wrong, naming the offending field, file or value.
        remedy: how to fix it.
        exit_code: the CLI's exit status for this kind of error.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, remedy: str) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def one_line(self) -> str:
        """Return the error and its remedy as a single line for the CLI."""
        return f"{self.message} (fix: {self.remedy})"


class ConfigError(ClinflError):
    """A federation or run setting is invalid."""

    exit_code = 2


@dataclass(frozen=True)
class Violation:
    """One invalid field: its name, the value given, the allowed range and the fix."""

    field: str
    value: object
    allowed: str
    fix: str

    def describe(self) -> str:
        """Return a human-readable line naming the field, value, bound and fix."""
        return f"{self.field}={self.value!r} is invalid: allowed {self.allowed}; {self.fix}"


class ValidationError(ConfigError):
    """Several settings are invalid at once; every violation is listed together."""

    def __init__(self, what: str, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        details = "; ".join(v.describe() for v in self.violations)
        super().__init__(
            f"invalid {what}: {details}",
            remedy="correct the listed field(s) and run again",
        )


class DataError(ClinflError):
    """A data set, image folder or label table cannot be used."""

    exit_code = 3


class LabelError(DataError):
    """A label table names unknown labels or lacks the needed columns."""


class InvalidImageError(DataError):
    """An image file cannot be decoded or has an unusable shape."""


class PartitionError(DataError):
    """The requested label-skew partition cannot be built from the data and settings."""


class ModelError(ClinflError):
    """A model cannot be built or a weights file cannot be loaded."""

    exit_code = 4


class FederationError(ClinflError):
    """A federation round could not complete."""

    exit_code = 5


class RoundAborted(FederationError):  # noqa: N818 - reads as an event, like ProtocolViolation
    """A round was abandoned (too few survivors, or a site refused); nothing was applied."""


class LocalTrainingFailed(FederationError):  # noqa: N818 - reads as an event
    """A site's local training failed for a reason that may depend on its data (a diverging loss).

    A site never shows this to the coordinator as a refusal (SECAGG.md, R7'): it audits it and
    takes part in the round with a zero update of weight 0.
    """


class SiteUnavailable(FederationError):  # noqa: N818
    """A site did not answer at some stage (it dropped out); the round may go on without it."""


class CheckpointError(ClinflError):
    """A checkpoint or results file cannot be written or read."""

    exit_code = 6


class ProtocolViolation(ClinflError):  # noqa: N818 - the name STYLE.md gives this error
    """A secure-aggregation peer broke the protocol (bad signature, stage order, lists)."""

    exit_code = 7


class PolicyViolation(ClinflError):  # noqa: N818 - reads as an event, like ProtocolViolation
    """A request would break a site's privacy policy; the site refuses it."""

    exit_code = 8


class BudgetExhausted(PolicyViolation):
    """A round would take a site past its epsilon budget; it is refused before any step."""


class PKIError(ClinflError):
    """The federation's PKI folder is missing, incomplete, or would be overwritten."""

    exit_code = 9


class RosterError(PKIError):
    """A roster or site request is malformed, tampered with, or not the one a site trusts."""


class DeploymentError(ClinflError):
    """The Flower deployment cannot start or lost a process it needs (SuperLink, SuperNode)."""

    exit_code = 10


class WireError(ProtocolViolation):
    """A message from the network cannot be decoded into one of clinfl's message types."""


class InternalError(ClinflError):
    """clinfl broke one of its own invariants: a bug, not a user mistake.

    Explicit checks raise it where an ``assert`` would be removed by ``python -O``: a state that
    later code relies on (a reservation's row, a resolved default, a trained optimizer) is never
    used while it is missing. Secure-aggregation sessions raise
    :class:`ProtocolViolation` instead, so that their secrets are wiped as well.
    """

    exit_code = 70  # EX_SOFTWARE

    def __init__(
        self, message: str, *, remedy: str = "this is a bug in clinfl; please report it"
    ) -> None:
        super().__init__(message, remedy=remedy)


class EvaluationError(FederationError):
    """Score histograms (a federated evaluation's counts) are malformed or cannot be combined."""
