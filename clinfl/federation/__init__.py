"""The contract between the two roles: round settings, site contributions, evaluation reports.

Both ``site_agent`` and ``coordinator`` import these types; neither imports the other.
"""

from clinfl.federation.messages import (
    EvaluationReport,
    RoundRecord,
    RoundSettings,
    SiteContribution,
    TrainingReport,
)
from clinfl.federation.roles import GlobalEvaluator, TrainingParticipant

__all__ = [
    "EvaluationReport",
    "GlobalEvaluator",
    "RoundRecord",
    "RoundSettings",
    "SiteContribution",
    "TrainingParticipant",
    "TrainingReport",
]
