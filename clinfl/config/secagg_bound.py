"""The coordinator's secure-aggregation settings for a run, in both modes, from one rule.

A run configuration's ``[secagg]`` table (:class:`~clinfl.secagg.settings.SecAggConfig`) is what
the coordinator asks for; each site's policy (its :class:`~clinfl.secagg.settings.SecAggTerms`,
after the run tightened it) is what the site accepts. The coordinator plans every round by
:func:`coordinator_secagg`, which raises its settings to the strictest site: the largest
``min_sites``, the largest ``max_colluders``, the smallest weight cap. The in-process federation
reads the terms from the sites' policies (:mod:`clinfl.simulation.sites`); a deployed coordinator
learns them from each site's join reply (:mod:`coordinator.deploy.deployment`) and derives its
settings before round 1. Each site still checks every round against its own policy, so a
coordinator that skips this rule is refused, not trusted.

:func:`check_roster_size` is ``clinfl coordinator start``'s refusal of a roster too small for
the run configuration's own ``min_sites + max_colluders``, before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from clinfl.config.federation_size import small_federation_fix
from clinfl.errors import ConfigError
from clinfl.secagg.settings import SecAggConfig, SecAggTerms


def _raised_by(
    secagg: SecAggConfig, declared: Mapping[str, SecAggTerms], *, floor: int, colluders: int
) -> str:
    """Name the sites whose terms raised the run configuration's floor or colluders."""
    parts = []
    if floor > secagg.sum_floor:
        sites = sorted(s for s, t in declared.items() if t.min_sites == floor)
        parts.append(f"min_sites {floor} from {', '.join(sites)}")
    if colluders > secagg.max_colluders:
        sites = sorted(s for s, t in declared.items() if t.max_colluders == colluders)
        parts.append(f"max_colluders {colluders} from {', '.join(sites)}")
    return f" ({'; '.join(parts)})" if parts else ""


def coordinator_secagg(
    secagg: SecAggConfig, declared: Mapping[str, SecAggTerms], *, sites: int | None = None
) -> SecAggConfig:
    """Return ``secagg`` raised to meet every site's ``declared`` terms (site -> terms).

    ``min_sites`` becomes the largest of the configuration's floor and every site's,
    ``max_colluders`` the largest, and ``weight_cap`` the smallest of the configuration's and
    every site's ``max_weight``. ``sites`` is how many sites take part (default: one per
    declaration; a site that declared nothing counts, with the configuration's terms).

    Raises:
        ConfigError: if secure aggregation is on and the federation has fewer sites than the
            strictest ``min_sites + max_colluders``; the message names the sites whose terms
            raised the configuration's, the remedy gives both ways out.
    """
    count = len(declared) if sites is None else sites
    terms = list(declared.values())
    floor = max([secagg.sum_floor, *(t.min_sites for t in terms)])
    colluders = max([secagg.max_colluders, *(t.max_colluders for t in terms)])
    cap = min([secagg.weight_cap, *(t.max_weight for t in terms)])
    if secagg.enabled and count < floor + colluders:
        raise ConfigError(
            f"the sites' policies require sums over at least {floor} sites besides "
            f"{colluders} possible colluder(s); the federation has {count}"
            + _raised_by(secagg, declared, floor=floor, colluders=colluders),
            remedy=small_federation_fix(count, min_sites=floor, max_colluders=colluders)
            if count >= 2
            else "use more sites",
        )
    return replace(secagg, min_sites=floor, weight_cap=cap, max_colluders=colluders)


def check_roster_size(secagg: SecAggConfig, sites: int, *, roster: Path) -> None:
    """Refuse a roster of ``sites`` sites too small for ``secagg``'s own bound.

    Nothing is checked for secure aggregation off, for an empty roster (refused on its own),
    or for invalid ``min_sites``/``max_colluders`` (the configuration's validation names them).

    Raises:
        ConfigError: if ``sites`` < ``min_sites + max_colluders``.
    """
    floor, colluders = secagg.sum_floor, secagg.max_colluders
    if not secagg.enabled or sites < 1 or floor < 2 or colluders < 0:
        return
    if sites >= floor + colluders:
        return
    admit = "admit more sites with `clinfl pki admit site-request.json`"
    raise ConfigError(
        f"the roster ({roster}) lists {sites} site(s), but the run configuration's secure "
        f"aggregation needs at least {floor + colluders}: sums over min_sites {floor} honest "
        f"sites besides max_colluders {colluders}",
        remedy=f"{admit}; {small_federation_fix(sites, min_sites=floor, max_colluders=colluders)}"
        if sites >= 2
        else admit,
    )
