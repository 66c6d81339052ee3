"""join_run's own refusals, and the one seed derivation both modes use."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clinfl.config import DataConfig, FederationConfig, MethodConfig, RunConfig
from clinfl.config.seeds import RunSeeds
from clinfl.data.digits import load_digit_composites
from clinfl.data.label_space import resolve_label_space
from clinfl.errors import ConfigError, PolicyViolation
from clinfl.simulation.sites import builtin_policy
from site_agent.agent import SiteIdentity
from site_agent.join import SimulatedSlice, SimulationOnly, join_run

RUN = RunConfig(
    data=DataConfig(dataset="digits", label_space="digits", image_size=16),
    federation=FederationConfig(sites=1, seed=5, federation_seed=11, batch_size=8),
    method=MethodConfig(name="fedavg"),
)


def _slice() -> SimulatedSlice:
    split = load_digit_composites(seed=0, image_size=16, per_pair=1)
    return SimulatedSlice(split.train.subset(np.arange(20)), split, resolve_label_space("digits"))


def test_run_seeds_derive_every_seed_from_the_federation_settings() -> None:
    seeds = RunSeeds.of(RUN.federation)
    assert (seeds.split, seeds.init, seeds.etf, seeds.bootstrap) == (5, 5, 11, 5)
    assert [seeds.stream(k) for k in range(3)] == [5000, 5001, 5002]


def test_a_site_joins_with_exactly_one_of_a_roster_and_an_in_process_directory(
    tmp_path: Path,
) -> None:
    identity = SiteIdentity("site-1", Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError, match="neither a roster"):
        join_run(
            identity,
            builtin_policy(RUN),
            _slice(),
            RUN,
            roster=None,
            state_dir=tmp_path,
            run_id="r",
        )
    directory = {"site-1": identity.signing_key.public_key()}
    joined = join_run(
        identity,
        builtin_policy(RUN),
        _slice(),
        RUN,
        roster=None,
        state_dir=tmp_path,
        run_id="r",
        simulation=SimulationOnly(
            stream_seed=RunSeeds.of(RUN.federation).stream(0), directory=directory
        ),
    )
    assert joined.spec.init_seed == 5 and joined.spec.federation_seed == 11
    assert joined.evaluator.threshold_rule.text == RUN.federation.threshold_rule
    assert len(joined.data.train) == 20


def test_a_site_whose_labels_are_in_another_space_declines(tmp_path: Path) -> None:
    identity = SiteIdentity("site-1", Ed25519PrivateKey.generate())
    xray = replace(RUN, data=replace(RUN.data, dataset="dicom", label_space="cxr14"))
    with pytest.raises(PolicyViolation, match="site-1 labels its images in the 'digits' space"):
        join_run(
            identity,
            builtin_policy(xray),
            _slice(),
            xray,
            roster=None,
            state_dir=tmp_path,
            run_id="r",
            simulation=SimulationOnly(directory={}),
        )
