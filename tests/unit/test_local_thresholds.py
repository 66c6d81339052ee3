"""Local operating points: thresholds a site fits on its own validation studies, kept there.

One deployed site joins a run over a small digits DICOM export (the join records its split),
and one model folder of the run's network is written; the tests share them (module scope) and
work on copies of the state folder where they change it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_files
from typer.testing import CliRunner

from clinfl.algorithms import ModelSpec, create_algorithm
from clinfl.algorithms.base import is_auxiliary
from clinfl.audit.render import NO_LOCAL_THRESHOLDS, render_site
from clinfl.cli.app import app
from clinfl.config import MethodConfig
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import parse_policy
from clinfl.config.seeds import RunSeeds
from clinfl.data.imageset import ImageSet
from clinfl.data.label_space import resolve_label_space
from clinfl.data.make_export import make_digits_export
from clinfl.errors import DataError, ModelError
from clinfl.model_io import ModelBundle, read_bundle, write_bundle
from clinfl.roster import Member, Roster, announce
from clinfl.thresholds import choose_thresholds, parse_rule
from clinfl.transport.contract import JoinRequest, read_refusal
from clinfl.transport.flower.bundle import app_pyproject
from clinfl.transport.wire import encode
from coordinator.deploy.launcher import portable_run_config
from site_agent.agent import SiteIdentity
from site_agent.audit_report import build_site_report
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from site_agent.local_split import (
    SPLITS_FILE,
    SplitRecord,
    groups_digest,
    read_split,
    rebuild_validation,
    record_split,
)
from site_agent.local_thresholds import (
    LOCAL_THRESHOLDS_FILE,
    fit_local_thresholds,
    local_thresholds_for,
    read_local_thresholds,
)
from site_agent.prediction.infer import probabilities
from site_agent.prediction.model import load_bundle_model
from site_agent.setup import load_export
from tests.support.roster_pki import RESEARCH_POLICY

runner = CliRunner()
RUN_ID = "run-1"
SELECTED_ROUND = 3
BUNDLE, _ = build_fab_from_files({"pyproject.toml": app_pyproject().encode()})
CONFIG: dict[str, Any] = {
    "data": {"dataset": "dicom", "label_space": "digits", "image_size": 16, "val_fraction": 0.3},
    "federation": {"rounds": 1, "batch_size": 16, "sites": 3, "threshold_rule": "youden"},
    "secagg": {"min_sites": 2},
    "method": {"name": "fedavg"},
}
KEY = Ed25519PrivateKey.generate()
ROSTER = Roster(
    ca_sha256="0" * 64,
    members=(
        Member(
            "site-1",
            KEY.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            "ecdsa-sha2-nistp256 AAAA",
            "0" * 64,
        ),
    ),
)


@dataclass(frozen=True)
class Joined:
    """The shared fixture: the export, the site's state after join, the model folder."""

    export: Path
    state: Path
    model: Path
    validation: ImageSet  # the validation set the site trained the run with (from the join)


def _model_folder(out: Path) -> None:
    """A model folder of the run's network (fedavg, digits, 16 px), as if exported."""
    method = MethodConfig(name="fedavg")
    algorithm = create_algorithm(method)
    seed = RunSeeds.of(run_config_from_mapping(CONFIG, base=out.parent).federation)
    spec = ModelSpec(num_classes=10, image_size=16, federation_seed=seed.etf, init_seed=seed.init)
    state = algorithm.initial_state(algorithm.build_model(spec))
    classes = resolve_label_space("digits").classes
    write_bundle(
        ModelBundle(
            method=method,
            label_space="digits",
            class_names=classes,
            image_size=16,
            init_seed=seed.init,
            federation_seed=seed.etf,
            state={k: v for k, v in state.items() if not is_auxiliary(k)},
            thresholds={
                "rule": "youden",
                "classes": {n: {"threshold": 0.5, "flagged": True} for n in classes},
            },
            provenance={"run_id": RUN_ID, "selected_round": SELECTED_ROUND},
        ),
        out,
    )


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Joined:
    root = tmp_path_factory.mktemp("local-thresholds")
    export = root / "export"
    make_digits_export(export, seed=0, limit=60, image_size=32)
    site = DeployedSite(
        SiteIdentity("site-1", KEY),
        policy=parse_policy(RESEARCH_POLICY),
        roster=ROSTER,
        data=SiteData(export, None, IngestOptions(image_size=16, label_space="digits")),
        state_dir=root / "state",
        threads=1,
    )
    config = run_config_from_mapping(CONFIG, base=root)
    reply = site.handle(
        flower_run=1,
        bundle=BUNDLE,
        bundle_hash=hashlib.sha256(BUNDLE).hexdigest(),
        call="join",
        body=encode(JoinRequest(RUN_ID, announce(portable_run_config(config), ROSTER.digest))),
    )
    assert read_refusal(reply) is None
    _model_folder(root / "model")
    validation = site._joined(1).data.val  # the very set the joined site holds out
    return Joined(export, root / "state", root / "model", validation)


def _state_copy(joined: Joined, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(joined.state, state)
    return state


def _scores(model_dir: Path, images: np.ndarray) -> np.ndarray:
    bundle = read_bundle(model_dir)
    assert bundle.federation_seed is not None
    model = load_bundle_model(bundle, federation_seed=bundle.federation_seed)
    return probabilities(model, images)


def _expected(joined: Joined) -> tuple[float, ...]:
    """The known answer: choose_thresholds on the site's validation split, at the run's rule."""
    scores = _scores(joined.model, joined.validation.images)
    return choose_thresholds(joined.validation.targets, scores, parse_rule("youden")).thresholds


def test_the_join_records_the_split_the_site_trained_with(joined: Joined) -> None:
    record = read_split(joined.state, RUN_ID)
    assert record.threshold_rule == "youden"
    assert record.val_fraction == 0.3
    assert record.val_digest == groups_digest(joined.validation)
    rebuilt = rebuild_validation(record, joined.state)
    assert np.array_equal(rebuilt.groups, joined.validation.groups)
    assert np.array_equal(rebuilt.targets, joined.validation.targets)
    assert np.array_equal(rebuilt.images, joined.validation.images)
    text = (joined.state / SPLITS_FILE).read_text()
    assert "1.2." not in text  # no DICOM UID, only salted study hashes' digests


def test_local_thresholds_are_choose_thresholds_on_the_sites_validation_split(
    joined: Joined, tmp_path: Path
) -> None:
    state = _state_copy(joined, tmp_path)
    bundle = read_bundle(joined.model)
    calls: list[int] = []

    def score(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return _scores(joined.model, images)

    local = local_thresholds_for(bundle, joined.model, state, score)
    expected = _expected(joined)
    assert local.thresholds == expected
    assert any(t != 0.5 for t in expected)  # a real fit, not the 0.5 fallback
    assert local.rule == "youden" and local.run_id == RUN_ID and local.round == SELECTED_ROUND
    assert local.validation_images == len(joined.validation)
    assert local.validation_studies == np.unique(joined.validation.groups).size
    kept = json.loads((state / LOCAL_THRESHOLDS_FILE).read_text())
    assert kept["sent"] == "never" and kept["thresholds"] == list(expected)
    # kept and reused for the same model and rule: the model is not run again
    assert local_thresholds_for(bundle, joined.model, state, score) == local
    assert calls == [len(joined.validation)]


def test_another_model_of_the_run_is_fitted_again(joined: Joined, tmp_path: Path) -> None:
    state = _state_copy(joined, tmp_path)
    bundle = read_bundle(joined.model)
    first = local_thresholds_for(bundle, joined.model, state, lambda x: _scores(joined.model, x))
    other = tmp_path / "other"
    changed = {k: v + 0.01 if v.is_floating_point() else v for k, v in bundle.state.items()}
    write_bundle(replace(bundle, state=changed), other)
    second = local_thresholds_for(read_bundle(other), other, state, lambda x: _scores(other, x))
    assert second.weights_sha256 != first.weights_sha256
    assert read_local_thresholds(state) == second


def test_fitting_needs_a_validation_study() -> None:
    empty = ImageSet(
        np.zeros((0, 16, 16), np.uint8),
        np.zeros((0, 2), np.uint8),
        np.zeros(0, np.int64),
        ("a", "b"),
    )
    with pytest.raises(DataError, match="no validation study"):
        fit_local_thresholds(
            empty, np.zeros((0, 2)), parse_rule("f1"), run_id="r", round_number=1, weights_sha256=""
        )


def test_a_run_that_left_no_validation_study_is_refused(joined: Joined, tmp_path: Path) -> None:
    state = _state_copy(joined, tmp_path)
    record = read_split(state, RUN_ID)
    split = load_export(
        record.site_data(), state_dir=state, image_size=16, val_fraction=0.0, seed=record.split_seed
    )
    assert len(split.val) == 0
    empty = replace(
        record,
        val_fraction=0.0,
        train_digest=groups_digest(split.train),
        val_digest=groups_digest(split.val),
    )
    record_split(state, empty)
    with pytest.raises(DataError, match="no validation study"):
        rebuild_validation(empty, state)


def _predict(*args: str) -> Any:
    return runner.invoke(app, ["model", "predict", *args])


def test_predict_with_local_thresholds(joined: Joined, tmp_path: Path) -> None:
    state = _state_copy(joined, tmp_path)
    out = tmp_path / "p.json"
    result = _predict("--model", str(joined.model), "--data", str(joined.export), "--out",
                      str(out), "--state", str(state), "--thresholds", "local", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    classes = resolve_label_space("digits").classes
    expected = _expected(joined)
    assert document["thresholds"] == dict(zip(classes, expected, strict=True))
    assert document["threshold_source"]["kind"] == "local"
    assert document["threshold_source"]["round"] == SELECTED_ROUND
    for row in document["predictions"]:
        hits = [n for n, t in zip(classes, expected, strict=True) if row["probabilities"][n] >= t]
        assert row["positive"] == hits
    # the site's audit report, rewritten, says they were fitted and kept
    report = json.loads((state / "audit_report.json").read_text())
    local = report["local_thresholds"]
    assert local["rule"] == "youden" and local["round"] == SELECTED_ROUND
    assert local["validation_studies"] == np.unique(joined.validation.groups).size
    assert local["sent"] == "never"
    markdown = (state / "audit_report.md").read_text()
    assert "Local operating points" in markdown and "never sent" in markdown
    assert f"round {SELECTED_ROUND}" in markdown


def test_predict_keeps_the_model_folders_thresholds_by_default(
    joined: Joined, tmp_path: Path
) -> None:
    state = _state_copy(joined, tmp_path)
    out = tmp_path / "p.json"
    result = _predict("--model", str(joined.model), "--data", str(joined.export), "--out",
                      str(out), "--state", str(state))  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert set(document["thresholds"].values()) == {0.5}
    assert document["threshold_source"] == {"kind": "model"}
    assert not (state / LOCAL_THRESHOLDS_FILE).exists()


def test_the_audit_report_says_when_no_local_thresholds_were_fitted(joined: Joined) -> None:
    report = build_site_report(joined.state)
    assert report["local_thresholds"] is None
    assert NO_LOCAL_THRESHOLDS in render_site(report, "md")


def _one_line_error(result: Any, code: int, words: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert words in lines[0] and "Traceback" not in result.output


def test_predict_errors_are_one_line(joined: Joined, tmp_path: Path) -> None:
    base = ["--model", str(joined.model), "--data", str(joined.export),
            "--out", str(tmp_path / "p.csv")]  # fmt: skip
    _one_line_error(_predict(*base, "--thresholds", "local"), 2, "needs the site's state folder")
    _one_line_error(_predict(*base, "--thresholds", "mine"), 2, "must be model or local")
    empty = tmp_path / "not-a-site"
    empty.mkdir()
    _one_line_error(
        _predict(*base, "--state", str(empty), "--thresholds", "local"), 4, "holds no record"
    )
    assert not (tmp_path / "p.csv").exists()


def test_a_changed_export_is_refused_not_split_again(joined: Joined, tmp_path: Path) -> None:
    state = _state_copy(joined, tmp_path)
    export = tmp_path / "export"
    shutil.copytree(joined.export, export)
    record = read_split(state, RUN_ID)
    record_split(state, replace(record, export=str(export)))
    dropped = sorted(p for p in export.rglob("*") if p.is_file() and p.suffix != ".csv")[:12]
    for path in dropped:
        path.unlink()
    result = _predict("--model", str(joined.model), "--data", str(joined.export), "--out",
                      str(tmp_path / "p.csv"), "--state", str(state), "--thresholds", "local")  # fmt: skip
    _one_line_error(result, 3, "changed since run")


def test_a_model_of_other_classes_is_refused(joined: Joined, tmp_path: Path) -> None:
    state = _state_copy(joined, tmp_path)
    bundle = read_bundle(joined.model)
    with pytest.raises(ModelError, match="classes"):
        local_thresholds_for(
            replace(bundle, image_size=32), joined.model, state, lambda x: np.zeros((len(x), 10))
        )


def test_a_split_record_round_trips(joined: Joined) -> None:
    record = read_split(joined.state, RUN_ID)
    assert SplitRecord.from_json_dict(record.to_json_dict()) == record
    assert record.site_data().options.label_space == "digits"


def test_policy_check_says_auc_means_joining_the_federated_evaluation() -> None:
    policies = Path(__file__).resolve().parents[2] / "policies"
    result = runner.invoke(app, ["policy", "check", str(policies / "research.toml")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "auc: this site joins the federated evaluation" in text
    assert "no per-site metric leaves in the clear" in text
    assert "differences sums over survivor sets" in text  # the residual risk, named
    assert "return the metrics in the clear" not in text  # the old meaning is gone
