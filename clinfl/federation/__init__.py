"""The contract between the two roles: round settings, site contributions, evaluation reports.

Both ``site_agent`` and ``coordinator`` import these types; neither imports the other. The
calls that carry them, and the participant interface, are in :mod:`clinfl.transport.contract`,
the contract's one home (it imports these messages, so this package never imports it).
"""

from clinfl.federation.messages import (
    EvaluationReport,
    RoundRecord,
    RoundSettings,
    SiteContribution,
    TrainingReport,
)

__all__ = [
    "EvaluationReport",
    "RoundRecord",
    "RoundSettings",
    "SiteContribution",
    "TrainingReport",
]
