"""What runs inside a hospital: local training and evaluation of the global model."""

from site_agent.evaluation import HeldOutEvaluator
from site_agent.training import SiteTrainer

__all__ = ["HeldOutEvaluator", "SiteTrainer"]
