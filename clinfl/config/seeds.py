"""Every seed a run uses, derived in one place from its ``federation`` settings.

Both modes (the in-process simulation and a deployment) take their seeds from here, so a site
splits, initialises and (in a simulation) shuffles the same way whichever mode joined it:

- ``split``: ``federation.seed``. The train/validation/test split (a deployed site's export, by
  study; the simulation's data set) and the simulation's label-skew partition over the sites.
- ``init``: ``federation.seed``. The initial model's weights (``ModelSpec.init_seed``); every
  site builds the same one, and the coordinator starts from one site's (or, in-process, the
  first site's).
- ``etf``: ``federation.federation_seed``. The shared fixed classifier (simplex ETF) of the
  methods that have one (``ModelSpec.federation_seed``); never sent in any message.
- ``bootstrap``: ``federation.seed``. The bootstrap resampling of the selected model's test AUC
  confidence intervals (where the test data is: the simulation's coordinator).
- :meth:`RunSeeds.stream`: ``federation.seed * 1000 + site_index`` (``site_index``: the site's
  position in the federation, from 0). The reproducible, NOT cryptographic, stream of a site's
  shuffling and sampling and of its secure-aggregation update's stochastic rounding, for the
  in-process simulation only (and a test that runs the deployed
  transport in-process); a deployed site draws this randomness from the operating system (R10).
"""

from __future__ import annotations

from dataclasses import dataclass

from clinfl.config.run import FederationConfig

STREAM_STRIDE = 1000  # site streams of runs with consecutive seeds never share a seed


@dataclass(frozen=True)
class RunSeeds:
    """The seeds of one run (see the module docstring for what each one drives)."""

    split: int
    init: int
    etf: int
    bootstrap: int
    base: int

    @classmethod
    def of(cls, federation: FederationConfig) -> RunSeeds:
        """Return the seeds of a run with ``federation``'s settings."""
        seed = federation.seed
        return cls(split=seed, init=seed, etf=federation.federation_seed, bootstrap=seed, base=seed)

    def stream(self, site_index: int) -> int:
        """Return the seed of site ``site_index``'s simulation-only training stream (0-based)."""
        return self.base * STREAM_STRIDE + site_index
