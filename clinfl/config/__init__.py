"""Configuration, one module per concern.

* :mod:`clinfl.config.run`: the run configuration's schema (the dataclasses and their defaults);
* :mod:`clinfl.config.checks`: the one way configuration is checked (every problem, raised once),
  shared by run configurations, their files and site policies;
* :mod:`clinfl.config.validation`: the checks of a run configuration's values;
* :mod:`clinfl.config.file`: reading a run configuration file (TOML);
* :mod:`clinfl.config.site_fields`: which settings belong to the sites, not the coordinator;
* :mod:`clinfl.config.digest`: the hash of a run configuration that every site binds.

A site's own terms are its policy (:mod:`clinfl.config.policy`, checked the same way); secure
aggregation's settings types sit with the protocol (:mod:`clinfl.secagg.settings`). Everything
a caller needs is importable from here: ``from clinfl.config import RunConfig``.
"""

from clinfl.config.run import (
    BACKBONES,
    CLASSIFIERS,
    DATASETS,
    DROP_STAGES,
    GRAD_SAMPLE_CHOICES,
    HEAD_BIASES,
    LABEL_SPACE_NAMES,
    NORMS,
    QUERIES,
    QUERY_SCALINGS,
    SECTIONS,
    SELECTIONS,
    WIDTHS,
    BackboneVariant,
    ClassifierKind,
    DataConfig,
    DatasetName,
    Dropout,
    FederationConfig,
    HeadBiasKind,
    MethodConfig,
    NormKind,
    PrivacyConfig,
    QueryKind,
    QueryScalingKind,
    RunConfig,
    SelectionRule,
)
from clinfl.config.validation import validate_run_config
from clinfl.secagg.settings import DEFAULT_MIN_SITES, SecAggConfig

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "DATASETS",
    "DEFAULT_MIN_SITES",
    "DROP_STAGES",
    "GRAD_SAMPLE_CHOICES",
    "HEAD_BIASES",
    "LABEL_SPACE_NAMES",
    "NORMS",
    "QUERIES",
    "QUERY_SCALINGS",
    "SECTIONS",
    "SELECTIONS",
    "WIDTHS",
    "BackboneVariant",
    "ClassifierKind",
    "DataConfig",
    "DatasetName",
    "Dropout",
    "FederationConfig",
    "HeadBiasKind",
    "MethodConfig",
    "NormKind",
    "PrivacyConfig",
    "QueryKind",
    "QueryScalingKind",
    "RunConfig",
    "SecAggConfig",
    "SelectionRule",
    "validate_run_config",
]
