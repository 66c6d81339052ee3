"""Loading the data set a run config names, with per-data-set defaults resolved."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from clinfl.config import RunConfig
from clinfl.config.policy import DataPolicy, load_policy
from clinfl.data.chestxray14 import ProgressCallback, load_chestxray14
from clinfl.data.digits import load_digit_composites
from clinfl.data.imageset import SplitData
from clinfl.data.label_space import resolve_label_space
from clinfl.errors import InternalError
from site_agent.ingest.pipeline import IngestOptions
from site_agent.ingest.split import ingest_and_split
from site_agent.setup import ingest_options


def site_data_policies(config: RunConfig) -> list[DataPolicy]:
    """Return the ``[data]`` terms of every simulated site's policy (none without policies).

    Raises:
        ConfigError, ValidationError: for an unreadable or invalid policy file.
    """
    privacy = config.privacy
    if privacy.policy is not None:
        return [load_policy(privacy.policy).data]
    if privacy.policy_dir is not None:
        sites = [f"site-{k + 1}" for k in range(config.federation.sites)]
        return [load_policy(privacy.policy_dir / f"{site}.toml").data for site in sites]
    return []


def load_dicom_export(config: RunConfig, state_dir: Path) -> SplitData:
    """Ingest a DICOM export (as one site would) and split it by study into train/val/test.

    The simulated sites share the export, so it is filtered by what every site's policy
    accepts (modalities, body parts, views); other files are quarantined with the reason.

    Raises:
        ConfigError, ValidationError: for an unreadable or invalid policy file.
        DataError, LabelError: see :func:`~site_agent.ingest.split.ingest_and_split`.
    """
    data = config.data
    if data.images is None or data.image_size is None:
        raise InternalError("data.images and data.image_size must be resolved for a DICOM export")
    options = IngestOptions(
        image_size=data.image_size,
        label_space=data.label_space,
        label_columns=data.label_columns,
        uncertain_labels=data.uncertain_labels,
    )
    return ingest_and_split(
        data.images,
        state_dir=state_dir,
        options=ingest_options(options, site_data_policies(config)),
        labels=data.labels,
        val_fraction=data.val_fraction,
        seed=config.federation.seed,
    )


def load_split_data(
    config: RunConfig, progress: ProgressCallback | None = None, *, state_dir: Path | None = None
) -> SplitData:
    """Load the configured data set (``config`` must have its defaults resolved).

    Raises:
        DataError: for missing or unusable data (see the loaders).
    """
    data = config.data
    if data.image_size is None:
        raise InternalError("data.image_size is not resolved (resolve_defaults sets it)")
    if data.dataset == "digits":
        split = load_digit_composites(
            seed=config.federation.seed,
            image_size=data.image_size,
            per_pair=data.composites_per_pair,
            val_fraction=data.val_fraction,
        )
        if data.max_samples is not None and len(split.train) > data.max_samples:
            rng = np.random.default_rng(config.federation.seed)
            keep = np.sort(rng.choice(len(split.train), size=data.max_samples, replace=False))
            split = replace(
                split,
                train=split.train.subset(keep),
                description=f"{split.description}; training set capped at {data.max_samples}",
            )
        return split
    if data.dataset == "dicom":
        if state_dir is None:
            raise InternalError("a DICOM export is ingested into a state directory; none was given")
        return load_dicom_export(config, state_dir)
    if data.images is None or data.labels is None:
        raise InternalError("data.images and data.labels must be set (validation requires them)")
    return load_chestxray14(
        data.images,
        data.labels,
        image_size=data.image_size,
        split_dir=data.split_dir,
        val_fraction=data.val_fraction,
        seed=config.federation.seed,
        max_samples=data.max_samples,
        progress=progress,
        space=resolve_label_space(data.label_space, data.label_columns),
        uncertain=data.uncertain_labels,
    )
