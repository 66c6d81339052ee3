"""Global checkpoints: safetensors files plus a JSON manifest, written atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import load_file, save

from clinfl.errors import CheckpointError
from clinfl.files import write_atomically, write_json
from clinfl.typing import StateDict

MANIFEST = "manifest.json"


class CheckpointStore:
    """``<run dir>/checkpoints/round-NNNN.safetensors`` and ``manifest.json`` listing them."""

    def __init__(self, run_dir: Path, *, resume: bool = False) -> None:
        """Open the run's checkpoint folder; with ``resume``, keep the rounds already listed.

        Raises:
            CheckpointError: if the folder cannot be created or its manifest read.
        """
        self.directory = run_dir / "checkpoints"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create {self.directory}: {exc}", remedy="choose a writable --out folder"
            ) from exc
        self._entries: list[dict[str, object]] = []
        existing = self.directory / MANIFEST
        if resume and existing.is_file():  # a restarted run keeps the rounds it wrote
            try:
                self._entries = list(json.loads(existing.read_text())["checkpoints"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"cannot read {existing}: {exc}", remedy="check the run folder"
                ) from exc

    def save(self, round_number: int, state: StateDict, metrics: Mapping[str, object]) -> Path:
        """Write the global state after ``round_number`` and update the manifest.

        Raises:
            CheckpointError: if writing fails.
        """
        path = self.directory / f"round-{round_number:04d}.safetensors"
        tensors = {name: value.detach().contiguous().cpu() for name, value in state.items()}
        data = save(tensors, metadata={"round": str(round_number)})
        write_atomically(path, data, remedy="check disk space")
        self._entries = [e for e in self._entries if e.get("round") != round_number]
        self._entries.append({"round": round_number, "file": path.name, "metrics": metrics})
        manifest = {"checkpoints": self._entries}
        write_json(self.directory / MANIFEST, manifest)
        return path

    def last_round(self) -> int | None:
        """Return the last round with a checkpoint (None before the first)."""
        rounds = [int(str(e["round"])) for e in self._entries]
        return max(rounds) if rounds else None

    def load(self, round_number: int) -> StateDict:
        """Read the checkpoint of ``round_number`` (no unpickling).

        Raises:
            CheckpointError: if it is missing or unreadable.
        """
        path = self.directory / f"round-{round_number:04d}.safetensors"
        try:
            return dict(load_file(str(path)))
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read {path}: {exc}", remedy="check the run folder"
            ) from exc
