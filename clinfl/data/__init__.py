"""Data: label space, readers, the ChestX-ray14 loader, composites, partitioning, demo data."""

from clinfl.data.chestxray14 import load_chestxray14
from clinfl.data.digits import load_digit_composites
from clinfl.data.imageset import ImageSet, SplitData
from clinfl.data.labels import CXR14_LABELS, DIGIT_CLASSES, parse_finding_labels
from clinfl.data.partition import Partition, partition_label_skew

__all__ = [
    "CXR14_LABELS",
    "DIGIT_CLASSES",
    "ImageSet",
    "Partition",
    "SplitData",
    "load_chestxray14",
    "load_digit_composites",
    "parse_finding_labels",
    "partition_label_skew",
]
