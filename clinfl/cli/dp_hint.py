"""A hint for a DP-SGD run that trains from random weights, where DP-SGD learns little.

The privacy-utility benchmark (docs/benchmarks.md, "Privacy against utility") measured DP-SGD
from random weights near chance on digits, and a pretrained backbone with its head alone
trained far above it; ``clinfl simulate`` says so before such a run, without changing it.
"""

from __future__ import annotations

from pathlib import Path

from clinfl.config import RunConfig
from clinfl.config.backbones import PRETRAINABLE
from clinfl.config.policy import load_policy
from clinfl.errors import ClinflError

DP_FROM_SCRATCH_HINT = (
    "DP-SGD from random weights learns little (measured near 58 macro-AUC on digits at "
    "epsilon 8); the measured DP recipe starts from pretrained weights and trains the head "
    "alone: `make demo` runs it (docs/privacy.md, docs/benchmarks.md 'Privacy against utility')"
)


def _policies(config: RunConfig) -> list[Path]:
    privacy = config.privacy
    if privacy.policy is not None:
        return [privacy.policy]
    if privacy.policy_dir is not None:
        return sorted(privacy.policy_dir.glob("site-*.toml"))
    return []


def dp_from_scratch_hint(config: RunConfig) -> str | None:
    """Return the hint when a site's policy requires DP-SGD and the backbone starts at random.

    Unreadable policies give no hint (the run reports them itself).
    """
    method = config.method
    pretrained = method.init_weights is not None or (
        method.backbone in PRETRAINABLE and method.pretrained
    )
    if pretrained:
        return None
    try:
        requires_dp = any(load_policy(path).dp.required for path in _policies(config))
    except ClinflError:
        return None
    return DP_FROM_SCRATCH_HINT if requires_dp else None
