"""How few sites a secure-aggregation federation may have, and what a colluding coordinator learns.

Every number here comes from the protocol's own rules (:mod:`clinfl.secagg.settings`, SECAGG.md
"Version 2", R5), never from a second copy of them:

* the threshold ``t`` is :func:`~clinfl.secagg.settings.default_threshold`: the smallest with
  ``t > (h + c) / 2`` for the ``h`` holders of a site's shares, and at least ``min_sites``;
* a round goes on only with at least
  :meth:`~clinfl.secagg.settings.SecAggRequirements.survivor_floor` sites,
  ``max(t, min_sites + c)``;
* a federation runs at all only with at least ``min_sites + c`` sites (the run configuration's
  check, :mod:`clinfl.config.validation`).

:func:`assess` applies them to one federation size. The refusal of a federation that is too
small (:func:`small_federation_fix`) and the table in ``docs/secure-aggregation.md``
(:func:`markdown_table`; a test keeps the page equal to it) are both built from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinfl.secagg.settings import (
    SecAggRequirements,
    default_degree,
    default_threshold,
    split_proof_threshold,
)

TABLE_SITES = range(2, 8)
"""The federation sizes ``docs/secure-aggregation.md`` tabulates."""
TABLE_SETTINGS = ((2, 0), (2, 1), (3, 1))
"""The (min_sites, c) pairs it tabulates: the two ways out for three sites, and the default."""
DOC_SECTION = "Small federations"


@dataclass(frozen=True)
class FederationSize:
    """What the protocol's rules make of ``sites`` sites under ``min_sites`` and ``c`` colluders.

    ``threshold`` and ``survivors`` are None when the federation is refused.
    """

    sites: int
    min_sites: int
    max_colluders: int
    threshold: int | None
    holders: int | None
    survivors: int | None

    @property
    def runs(self) -> bool:
        """Whether a federation of this size runs at all."""
        return self.survivors is not None

    @property
    def sites_needed(self) -> int:
        """The fewest sites that run with these settings: ``min_sites + c``."""
        return self.min_sites + self.max_colluders

    @property
    def dropouts(self) -> int:
        """How many sites a round may lose and still complete (0 if it does not run)."""
        return 0 if self.survivors is None else self.sites - self.survivors

    def fewest_honest(self, colluders: int) -> int:
        """The fewest honest inputs in a sum a coordinator colluding with ``colluders`` computes.

        1 means one honest site's update, exactly. The coordinator chooses who "survives", so
        it can shrink a round's survivor set to the floor and subtract its colluders' inputs.
        With ``t`` or more colluding share holders, or when the threshold is not split-proof
        against that many colluders (``t <= (h + k) / 2``: two survivor sets that disagree
        about one site then both gather ``t`` answers), it unmasks a single site.
        """
        if self.threshold is None or self.survivors is None or self.holders is None:
            raise ValueError(f"{self.sites} sites do not run with these settings")
        split_proof = self.threshold >= split_proof_threshold(self.holders, max_colluders=colluders)
        if colluders >= self.threshold or not split_proof:
            return 1
        return max(1, self.survivors - colluders)

    def learns(self, colluders: int) -> str:
        """What a coordinator colluding with ``colluders`` sites can compute, in words."""
        honest = self.fewest_honest(colluders)
        if honest == 1:
            return "one honest site's update exactly"
        return f"only sums over {honest} or more honest sites"


def assess(sites: int, *, min_sites: int, max_colluders: int) -> FederationSize:
    """Apply the protocol's rules to a federation of ``sites`` sites (at least 2)."""
    runs = sites >= min_sites + max_colluders and min_sites >= 2
    if not runs:
        return FederationSize(sites, min_sites, max_colluders, None, None, None)
    degree = default_degree(sites)
    threshold = default_threshold(sites, degree, min_sites=min_sites, max_colluders=max_colluders)
    holders = min(degree, sites - 1) + 1
    requirements = SecAggRequirements(min_sites=min_sites, max_colluders=max_colluders)
    return FederationSize(
        sites,
        min_sites,
        max_colluders,
        threshold,
        holders,
        requirements.survivor_floor(threshold),
    )


def _colluding(count: int) -> str:
    if count == 0:
        return "colluding with no site"
    return f"colluding with {count} site" + ("" if count == 1 else "s")


def _dropouts(count: int) -> str:
    return "no dropout" if count == 0 else f"{count} dropout" + ("" if count == 1 else "s")


def small_federation_fix(sites: int, *, min_sites: int, max_colluders: int) -> str:
    """The fix for ``sites`` sites too few for ``min_sites`` and ``max_colluders``: both ways out.

    One way is more sites; the other is a smaller ``min_sites`` (and, for two sites with a
    colluder assumed, no colluder assumed), each with what it means for a colluding coordinator.
    """
    c = max_colluders
    enough = assess(min_sites + c, min_sites=min_sites, max_colluders=c)
    more = (
        f"either use at least {enough.sites} sites (a coordinator {_colluding(c)} then learns "
        f"{enough.learns(c)})"
    )
    lower, assumed = (sites - c, c) if sites - c >= 2 else (2, 0)
    small = assess(sites, min_sites=lower, max_colluders=assumed)
    changed = assumed != c
    setting = f"min_sites {lower}" + (f" and max_colluders {assumed}" if changed else "")
    where = (
        f"--secagg-min-sites {lower}"
        + (f" --secagg-max-colluders {assumed}" if changed else "")
        + f", or [secagg] min_sites = {lower}"
        + (f", max_colluders = {assumed}" if changed else "")
        + " in the run config and in every site's policy"
    )
    fewer = (
        f"or set {setting} ({where}): {sites} sites then run with {_dropouts(small.dropouts)} "
        f"allowed, a coordinator {_colluding(assumed)} learns {small.learns(assumed)}, and one "
        f"{_colluding(assumed + 1)} learns {small.learns(assumed + 1)}"
    )
    if sites == 2:
        fewer += " (and each site can compute the other's update from the new global model)"
    return f"{more}, {fewer} (docs/secure-aggregation.md, '{DOC_SECTION}')"


def markdown_table(
    sizes: range = TABLE_SITES, settings: tuple[tuple[int, int], ...] = TABLE_SETTINGS
) -> str:
    """The table of ``docs/secure-aggregation.md``: each size against each (min_sites, c)."""
    lines = [
        "| sites | min_sites | c | runs | threshold t | must survive | dropouts allowed "
        "| a coordinator colluding with c sites learns | with c + 1 colluders |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sites in sizes:
        for min_sites, c in settings:
            size = assess(sites, min_sites=min_sites, max_colluders=c)
            if not size.runs:
                cells = [f"no: needs {size.sites_needed} sites", "-", "-", "-", "-", "-"]
            else:
                cells = [
                    "yes",
                    str(size.threshold),
                    f"{size.survivors} of {sites}",
                    str(size.dropouts),
                    size.learns(c),
                    size.learns(c + 1),
                ]
            lines.append("| " + " | ".join([str(sites), str(min_sites), str(c), *cells]) + " |")
    return "\n".join(lines)
