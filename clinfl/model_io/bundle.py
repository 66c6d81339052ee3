"""A model folder: the selected global model, its config, thresholds and provenance.

Four files, none of them pickled::

    model.json           format, method config, label space, its class names and digest, image
                         size, seeds, the SHA-256 of the weights, the initial weights training
                         started from
    weights.safetensors  every tensor of the selected round's model (never the ETF): the
                         travelling ones, and the blocks that never trained (``train_blocks``)
    thresholds.json      one operating threshold per class, chosen on validation
    provenance.json      the run: sites, rounds, data, secure aggregation, privacy, test metrics

The ETF is rebuilt from the federation seed. ``model.json`` carries the seed only when the
export included it; otherwise whoever uses the model supplies it (:func:`resolve_seed`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save

from clinfl.config import MethodConfig
from clinfl.data.label_space import CUSTOM, SPACE_NAMES, LabelSpace, resolve_label_space
from clinfl.errors import CheckpointError, ConfigError, ModelError, ValidationError
from clinfl.files import write_atomically
from clinfl.typing import StateDict
from clinfl.weights.provenance import WeightsDocument

FORMAT = "clinfl-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
THRESHOLDS_FILE = "thresholds.json"
PROVENANCE_FILE = "provenance.json"
BUNDLE_FILES = (MODEL_FILE, WEIGHTS_FILE, THRESHOLDS_FILE, PROVENANCE_FILE)


@dataclass(frozen=True)
class ModelBundle:
    """A model folder read into memory (see the module docstring)."""

    method: MethodConfig
    label_space: str
    class_names: tuple[str, ...]
    image_size: int
    init_seed: int
    federation_seed: int | None
    state: StateDict
    thresholds: dict[str, Any]
    provenance: dict[str, Any]
    init_weights: WeightsDocument | None = None
    """The file training started from (name or file, SHA-256, source); None: random weights."""

    @property
    def space(self) -> LabelSpace:
        """The label space the model predicts: its name and its classes in output order."""
        return LabelSpace(self.label_space, self.class_names)

    @property
    def threshold_values(self) -> tuple[float, ...]:
        """The operating threshold of each class, in class order."""
        classes = self.thresholds["classes"]
        return tuple(float(classes[name]["threshold"]) for name in self.class_names)

    def model_document(self, weights_sha256: str) -> dict[str, Any]:
        """Return the contents of ``model.json``."""
        method = dataclasses.asdict(self.method)
        method.pop("init_weights")  # the trained weights supersede any initial backbone file
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": method,
            "label_space": self.label_space,
            "class_names": list(self.class_names),
            "label_space_digest": self.space.digest,
            "image_size": self.image_size,
            "input": "grayscale, square, resized with antialiasing; (x / 255 - 0.5) / 0.25",
            "init_seed": self.init_seed,
            "etf_seed": "included" if self.federation_seed is not None else "omitted",
            "federation_seed": self.federation_seed,
            "weights_sha256": weights_sha256,
            "init_weights": self.init_weights,
        }


def write_file(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` through a temporary file and a rename (no torn files).

    Raises:
        CheckpointError: if the folder or the file cannot be written.
    """
    path = directory / name
    remedy = "choose a writable --out folder"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc}", remedy=remedy) from exc
    write_atomically(path, data, remedy=remedy)


def _json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def write_bundle(bundle: ModelBundle, out_dir: Path) -> None:
    """Write ``bundle`` as a model folder at ``out_dir`` (created; existing files replaced).

    Raises:
        CheckpointError: if a file cannot be written.
    """
    tensors = {name: value.detach().contiguous().cpu() for name, value in bundle.state.items()}
    weights = save(dict(sorted(tensors.items())), metadata={"format": FORMAT})
    write_file(out_dir, WEIGHTS_FILE, weights)
    write_file(out_dir, THRESHOLDS_FILE, _json_bytes(bundle.thresholds))
    write_file(out_dir, PROVENANCE_FILE, _json_bytes(bundle.provenance))
    document = bundle.model_document(hashlib.sha256(weights).hexdigest())
    write_file(out_dir, MODEL_FILE, _json_bytes(document))  # last: a folder without it is torn


def _bad(directory: Path, what: str) -> ModelError:
    return ModelError(
        f"model folder {directory} {what}",
        remedy="export it again with `clinfl model export --run RUN_DIR --out DIR`",
    )


def _read_json(directory: Path, name: str) -> dict[str, Any]:
    try:
        document = json.loads((directory / name).read_text())
    except FileNotFoundError:
        raise _bad(directory, f"has no {name}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _bad(directory, f"holds an unreadable {name} ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise _bad(directory, f"holds an unreadable {name} (not a JSON object)")
    return document


def _init_weights(directory: Path, raw: Any) -> WeightsDocument | None:
    """The ``init_weights`` record of ``model.json`` (absent in folders from before it: None)."""
    if raw is None:
        return None
    keys = set(WeightsDocument.__annotations__)
    if not isinstance(raw, dict) or set(raw) != keys or not isinstance(raw["source"], str):
        raise _bad(directory, f"has an unreadable init_weights record in {MODEL_FILE}")
    if not all(raw[k] is None or isinstance(raw[k], str) for k in ("name", "file", "sha256")):
        raise _bad(directory, f"has an unreadable init_weights record in {MODEL_FILE}")
    return WeightsDocument(
        name=raw["name"], file=raw["file"], sha256=raw["sha256"], source=raw["source"]
    )


def _method_config(directory: Path, raw: Any) -> MethodConfig:
    names = {f.name for f in dataclasses.fields(MethodConfig)} - {"init_weights"}
    if not isinstance(raw, dict) or not set(raw) <= names or "name" not in raw:
        raise _bad(directory, f"has an unreadable method config in {MODEL_FILE}")
    return MethodConfig(**raw)


def _check_space(directory: Path, name: str, class_names: tuple[str, ...], digest: object) -> None:
    """Check that the class names are the label space's, and its digest theirs (when given)."""
    try:
        columns = class_names if name == CUSTOM else ()
        fits = name in SPACE_NAMES and resolve_label_space(name, columns).classes == class_names
    except ValidationError:
        fits = False
    if not fits:
        raise _bad(directory, f"names classes that are not the {name!r} label space")
    if digest is not None and digest != LabelSpace(name, class_names).digest:
        raise _bad(directory, f"has a label-space digest that is not its classes' ({MODEL_FILE})")


def read_bundle(directory: Path) -> ModelBundle:
    """Read and check a model folder written by :func:`write_bundle`.

    Raises:
        ModelError: if the folder is missing, a file is missing or unreadable, the format is
            unknown, the class names do not match their label space (or its digest), or the
            weights are corrupt
            (not safetensors, or not the file ``model.json`` names by its SHA-256).
    """
    if not directory.is_dir():
        raise ModelError(
            f"model folder {directory} does not exist",
            remedy="pass the folder `clinfl model export --out` wrote, e.g. --model model/",
        )
    document = _read_json(directory, MODEL_FILE)
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise _bad(directory, f"is not a {FORMAT} v{FORMAT_VERSION} folder")
    try:
        raw = (directory / WEIGHTS_FILE).read_bytes()
    except OSError:
        raise _bad(directory, f"has no readable {WEIGHTS_FILE}") from None
    if hashlib.sha256(raw).hexdigest() != document.get("weights_sha256"):
        raise _bad(directory, f"holds a corrupt {WEIGHTS_FILE} (its SHA-256 does not match)")
    try:
        state = dict(load(raw))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise _bad(directory, f"holds a corrupt {WEIGHTS_FILE} ({exc})") from None
    try:
        label_space = str(document["label_space"])
        class_names = tuple(str(c) for c in document["class_names"])
        image_size = int(document["image_size"])
        init_seed = int(document["init_seed"])
        seed = document.get("federation_seed")
        federation_seed = None if seed is None else int(seed)
    except (KeyError, TypeError, ValueError):
        raise _bad(directory, f"has an incomplete {MODEL_FILE}") from None
    _check_space(directory, label_space, class_names, document.get("label_space_digest"))
    thresholds = _read_json(directory, THRESHOLDS_FILE)
    if set(thresholds.get("classes", {})) != set(class_names):
        raise _bad(directory, f"has thresholds for other classes than {label_space!r}'s")
    return ModelBundle(
        method=_method_config(directory, document.get("method")),
        label_space=label_space,
        class_names=class_names,
        image_size=image_size,
        init_seed=init_seed,
        federation_seed=federation_seed,
        state=state,
        thresholds=thresholds,
        provenance=_read_json(directory, PROVENANCE_FILE),
        init_weights=_init_weights(directory, document.get("init_weights")),
    )


def resolve_seed(bundle: ModelBundle, supplied: int | None) -> int:
    """Return the federation seed that rebuilds the bundle's ETF.

    Raises:
        ConfigError: if the folder omits the seed and none is supplied, or both disagree.
    """
    carried = bundle.federation_seed
    if carried is None:
        if supplied is None:
            raise ConfigError(
                "this model folder does not carry the federation seed its ETF is built from",
                remedy="pass --federation-seed N (your site's federation seed)",
            )
        return supplied
    if supplied not in (None, carried):
        raise ConfigError(
            f"--federation-seed {supplied} differs from the seed the model folder carries",
            remedy="leave --federation-seed out",
        )
    return carried
