"""Federated algorithms, one module each, found through the registry.

Adding an algorithm means adding one module that subclasses :class:`Algorithm`, decorates it with
:func:`register_algorithm`, and importing that module here.
"""

from clinfl.algorithms import fedavg, fedcurv, fedncalign, fedprox, scaffold, spherefed
from clinfl.algorithms.base import Algorithm, ModelSpec
from clinfl.algorithms.registry import (
    algorithm_summaries,
    available_algorithms,
    create_algorithm,
    register_algorithm,
)
from clinfl.typing import StateDict

__all__ = [
    "Algorithm",
    "ModelSpec",
    "StateDict",
    "algorithm_summaries",
    "available_algorithms",
    "create_algorithm",
    "fedavg",
    "fedcurv",
    "fedncalign",
    "fedprox",
    "register_algorithm",
    "scaffold",
    "spherefed",
]
