"""Pooled out-of-fold predictions: one row per image, stored as ``oof.npz`` (no pickles).

Each row holds the image's id, patient, owning site (-1: none), fold, the scores of the model
that did not train on it (NaN where no model scored it: a local-only run cannot score a patient
that no site owns) and its labels. Two runs on the same folds have the same
:meth:`OofPredictions.plan_digest`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clinfl.errors import DataError
from clinfl.files import write_atomically

OOF_FILE = "oof.npz"


@dataclass(frozen=True)
class OofPredictions:
    """The pooled out-of-fold predictions of a cross-validated run."""

    ids: np.ndarray
    patients: np.ndarray
    sites: np.ndarray
    folds: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    class_names: tuple[str, ...]
    ages: np.ndarray | None = None

    @property
    def scored(self) -> np.ndarray:
        """Which images a model scored."""
        mask: np.ndarray = ~np.isnan(self.scores).any(axis=1)
        return mask

    def plan_digest(self) -> str:
        """Return a SHA-256 over ids, patients, folds, labels and class names (hex)."""
        digest = hashlib.sha256()
        for part in (self.ids, self.patients, np.array(self.class_names)):
            digest.update("\x1f".join(str(v) for v in part).encode() + b"\x1e")
        digest.update(self.folds.astype(np.int64).tobytes())
        digest.update(self.targets.astype(np.uint8).tobytes())
        return digest.hexdigest()

    def save(self, path: Path) -> None:
        """Write the predictions to ``path`` (npz).

        Raises:
            CheckpointError: if the file cannot be written.
        """
        arrays = {
            "ids": self.ids.astype(str),
            "patients": self.patients.astype(str),
            "sites": self.sites.astype(np.int64),
            "folds": self.folds.astype(np.int64),
            "scores": self.scores.astype(np.float64),
            "targets": self.targets.astype(np.uint8),
            "class_names": np.array(self.class_names, dtype=str),
        }
        if self.ages is not None:
            arrays["ages"] = self.ages.astype(np.float64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        write_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> OofPredictions:
        """Read predictions written by :meth:`save` (no pickled objects are accepted).

        Raises:
            DataError: if the file is missing or not such a file.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    ids=data["ids"],
                    patients=data["patients"],
                    sites=data["sites"],
                    folds=data["folds"],
                    scores=data["scores"],
                    targets=data["targets"],
                    class_names=tuple(str(c) for c in data["class_names"]),
                    ages=data["ages"] if "ages" in data.files else None,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(
                f"cannot read out-of-fold predictions {path}: {exc}",
                remedy="give a run folder written by `clinfl simulate --cv`",
            ) from exc
