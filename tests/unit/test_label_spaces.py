"""Label spaces beyond ChestX-ray14: CheXpert's observations and a site's own finding columns.

Known answers for CheXpert's uncertain (-1) and blank cells, custom spaces from a labels file's
columns, every violation reported at once, the label-space digest, and the refusals of a model
folder or a run whose label space is not the data's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clinfl.algorithms import available_algorithms
from clinfl.config import DataConfig, MethodConfig, RunConfig, validate_run_config
from clinfl.config.file import run_config_from_mapping
from clinfl.config.policy import parse_policy
from clinfl.data.chestxray14 import load_chestxray14
from clinfl.data.label_space import (
    LabelSpace,
    check_same_space,
    resolve_label_space,
    space_difference,
)
from clinfl.data.label_table import table_targets
from clinfl.data.labels import CHEXPERT_LABELS, LABEL_SPACES
from clinfl.errors import LabelError, ModelError, ValidationError
from clinfl.model_io import ModelBundle, read_bundle, write_bundle
from clinfl.model_io.card import build_card, render_card
from clinfl.transport.contract import read_refusal
from site_agent.agent import SiteIdentity
from site_agent.deploy.deployed_site import DeployedSite, SiteData
from site_agent.ingest.pipeline import IngestOptions
from tests.support.roster_pki import RESEARCH_POLICY
from tests.unit.test_deployed_join import HONEST, KEY, ROSTER, _join

CHEXPERT = resolve_label_space("chexpert")
TRIO = resolve_label_space("custom", ("Effusion", "Nodule", "Mass"))


def test_chexpert_is_the_labelers_fourteen_observations_in_its_order() -> None:
    assert LABEL_SPACES["chexpert"] == CHEXPERT_LABELS == CHEXPERT.classes
    assert CHEXPERT_LABELS[0] == "No Finding" and CHEXPERT_LABELS[-1] == "Support Devices"
    assert CHEXPERT_LABELS[10] == "Pleural Effusion" and len(CHEXPERT_LABELS) == 14


def _chexpert_rows() -> tuple[list[str], list[dict[str, str]]]:
    header = ["Path", "Sex", "Age", *CHEXPERT_LABELS]
    cells = [
        # No Finding, Cardiomegaly, Edema, Pleural Effusion, Support Devices; the rest blank
        {"No Finding": "1.0"},
        {"Cardiomegaly": "-1.0", "Edema": "1.0", "Pleural Effusion": "0.0"},
        {"Cardiomegaly": "0", "Pleural Effusion": "-1", "Support Devices": "1"},
    ]
    rows = [{"Path": f"p{i}.jpg", "Sex": "F", "Age": "60", **c} for i, c in enumerate(cells)]
    return header, rows


def test_chexpert_uncertain_cells_follow_the_u_ones_or_u_zeros_policy_and_blanks_are_zero() -> None:
    header, rows = _chexpert_rows()
    ones = table_targets(header, rows, CHEXPERT, uncertain="ones")
    zeros = table_targets(header, rows, CHEXPERT, uncertain="zeros")
    index = {name: k for k, name in enumerate(CHEXPERT_LABELS)}
    expected_ones = np.zeros((3, 14), dtype=np.uint8)
    expected_ones[0, index["No Finding"]] = 1
    expected_ones[1, [index["Cardiomegaly"], index["Edema"]]] = 1
    expected_ones[2, [index["Pleural Effusion"], index["Support Devices"]]] = 1
    np.testing.assert_array_equal(ones, expected_ones)
    expected_zeros = expected_ones.copy()
    expected_zeros[1, index["Cardiomegaly"]] = 0  # the two uncertain cells only
    expected_zeros[2, index["Pleural Effusion"]] = 0
    np.testing.assert_array_equal(zeros, expected_zeros)


def test_uncertain_cells_are_refused_outside_chexpert() -> None:
    header = ["Image Index", "Effusion", "Nodule", "Mass"]
    rows = [{"Image Index": "a", "Effusion": "-1", "Nodule": "1", "Mass": ""}]
    with pytest.raises(LabelError, match=r"column 'Effusion' holds .*row 2 '-1'"):
        table_targets(header, rows, TRIO)


def test_a_custom_space_reads_its_columns_by_name_in_its_own_order() -> None:
    header = ["Image Index", "mass", "Nodule", "Patient ID", "EFFUSION", "Other"]
    rows = [
        {"Image Index": "a", "mass": "1", "Nodule": "0", "EFFUSION": "1.0", "Other": "1"},
        {"Image Index": "b", "mass": "0", "Nodule": "1", "EFFUSION": "", "Other": "0"},
    ]
    targets = table_targets(header, rows, TRIO)
    assert TRIO.classes == ("Effusion", "Nodule", "Mass")
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 1, 0]])


def test_a_label_table_reports_every_problem_at_once() -> None:
    header = ["Image Index", "Effusion", "Patient ID"]
    rows = [{"Image Index": str(i), "Effusion": cell} for i, cell in enumerate("1x01y2????")]
    with pytest.raises(LabelError) as caught:
        table_targets(header, rows, TRIO, source="label table labels.csv")
    message = caught.value.message
    assert message.startswith("label table labels.csv does not fit the custom (3 classes: ")
    assert "no column for 'Nodule', 'Mass'" in message
    assert "(its columns: 'Image Index', 'Effusion', 'Patient ID')" in message
    assert message.endswith(
        "column 'Effusion' holds other values than 0, 1 or blank: row 3 'x', row 6 'y', "
        "row 7 '2', row 8 '?', row 9 '?' and 2 more"
    )
    clash = ["Image Index", "Effusion", "effusion", "Nodule", "Mass"]
    with pytest.raises(LabelError, match="columns 'Effusion' and 'effusion' both name 'Effusion'"):
        table_targets(clash, [dict.fromkeys(clash, "0")], TRIO)


def test_custom_label_columns_are_validated_with_every_violation() -> None:
    def problems(data: DataConfig) -> str:
        with pytest.raises(ValidationError) as caught:
            validate_run_config(RunConfig(data=data), known_methods=available_algorithms())
        return caught.value.message

    one = problems(DataConfig(label_space="custom", label_columns=("Effusion",)))
    assert "label_columns=['Effusion'] is invalid: allowed at least 2" in one
    message = problems(
        DataConfig(
            dataset="dicom",
            images=Path("."),
            label_space="custom",
            label_columns=("Mass", "mass", " ", "A|B"),
            uncertain_labels="maybe",
        )
    )
    assert "label_columns=['Mass', 'mass'] is invalid: allowed distinct names" in message
    assert "label_columns=[' ', 'A|B'] is invalid: allowed non-blank names" in message
    assert "uncertain_labels='maybe'" in message
    fixed = problems(DataConfig(label_space="cxr14", label_columns=("A", "B")))
    assert "none for the 'cxr14' label space" in fixed
    assert "only with label_space 'chexpert'" in problems(DataConfig(uncertain_labels="zeros"))
    with pytest.raises(ValidationError, match="label_space='nih'"):
        resolve_label_space("nih")


def test_a_config_file_names_the_custom_columns(tmp_path: Path) -> None:
    document = {"data": {"label_space": "custom", "label_columns": ["Effusion", "Nodule"]}}
    config = run_config_from_mapping(document, base=tmp_path)
    assert config.data.label_columns == ("Effusion", "Nodule")
    assert config.to_json_dict()["data"]["label_columns"] == ["Effusion", "Nodule"]


def test_the_digest_is_the_name_and_the_ordered_classes() -> None:
    assert TRIO.digest == LabelSpace("custom", ("Effusion", "Nodule", "Mass")).digest
    reordered = LabelSpace("custom", ("Nodule", "Effusion", "Mass"))
    renamed = LabelSpace("cxr14", TRIO.classes)
    assert len({TRIO.digest, reordered.digest, renamed.digest}) == 3
    # pinned: a model folder's digest must not change between clinfl versions
    assert resolve_label_space("cxr14").digest == (
        "1e2752648a70df5c4c934eea5ac5f499be767dc808a3630064e56f71211d1ab2"
    )
    assert space_difference(TRIO, reordered) == (
        "the same classes in another order: Effusion, Nodule, Mass vs Nodule, Effusion, Mass"
    )
    fewer = LabelSpace("custom", ("Effusion", "Nodule", "Fracture"))
    assert space_difference(TRIO, fewer) == "the classes differ: it lacks Mass and adds Fracture"
    assert space_difference(TRIO, renamed) == "the names differ ('custom' vs 'cxr14')"
    with pytest.raises(LabelError, match=r"^the run: custom .* another order"):
        check_same_space(TRIO, reordered, what="the run: {expected} vs {given}", remedy="-")


@pytest.mark.parametrize(("uncertain", "positives"), [("ones", 5), ("zeros", 3)])
def test_the_png_loader_reads_a_chexpert_table_by_its_path_column(
    tmp_path: Path, uncertain: str, positives: int
) -> None:
    header, rows = _chexpert_rows()
    (tmp_path / "CheXpert-v1.0-small").mkdir()
    table_rows = []
    for i in range(12):  # the three rows four times, one image each
        row = dict(rows[i % 3], Path=f"CheXpert-v1.0-small/p{i}.png")
        Image.fromarray(np.full((20, 20), 10 * i, dtype=np.uint8)).save(tmp_path / row["Path"])
        table_rows.append(",".join(row.get(h, "") for h in header))
    table = tmp_path / "train.csv"
    table.write_text("\n".join([",".join(header), *table_rows]) + "\n")
    split = load_chestxray14(tmp_path, table, image_size=16, space=CHEXPERT, uncertain=uncertain)
    assert split.train.class_names == CHEXPERT_LABELS
    total = sum(int(s.targets.sum()) for s in (split.train, split.val, split.test))
    assert total == 4 * positives  # per three rows: 5 positives under U-Ones, 3 under U-Zeros
    assert "chexpert (14 classes" in split.description


def _bundle(space: LabelSpace) -> ModelBundle:
    classes = {name: {"threshold": 0.5, "flagged": False} for name in space.classes}
    return ModelBundle(
        method=MethodConfig(name="fedavg"),
        label_space=space.name,
        class_names=space.classes,
        image_size=16,
        init_seed=0,
        federation_seed=1,
        state={"w": torch.zeros(2)},
        thresholds={"rule": "f1", "classes": classes},
        provenance={"test": {}},
    )


def test_a_model_folder_records_its_label_space_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    write_bundle(_bundle(TRIO), tmp_path / "model")
    document = json.loads((tmp_path / "model" / "model.json").read_text())
    assert document["label_space"] == "custom"
    assert document["class_names"] == ["Effusion", "Nodule", "Mass"]
    assert document["label_space_digest"] == TRIO.digest
    assert read_bundle(tmp_path / "model").space == TRIO
    card = build_card(read_bundle(tmp_path / "model"))
    assert card["model"]["classes"] == ["Effusion", "Nodule", "Mass"]
    markdown = render_card(card, "md")
    assert "| classes (output order) | Effusion, Nodule, Mass |" in markdown
    assert TRIO.digest in markdown
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "model", tampered)
    document["class_names"] = ["Nodule", "Effusion", "Mass"]  # reordered outputs
    (tampered / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="label-space digest that is not its classes'"):
        read_bundle(tampered)
    document["class_names"] = ["Effusion"]
    document.pop("label_space_digest")
    (tampered / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="not the 'custom' label space"):
        read_bundle(tampered)


def test_a_deployed_site_of_another_label_space_declines_to_join(tmp_path: Path) -> None:
    options = IngestOptions(image_size=16, label_space="custom", label_columns=TRIO.classes)
    site = DeployedSite(
        SiteIdentity("site-1", KEY),
        policy=parse_policy(RESEARCH_POLICY),
        roster=ROSTER,
        data=SiteData(tmp_path / "export", None, options),
        state_dir=tmp_path / "state",
        threads=1,
    )
    run = {name: dict(table) for name, table in HONEST.items()}
    run["data"] = {**run["data"], "label_space": "custom"}
    run["data"]["label_columns"] = ["Nodule", "Effusion", "Mass"]
    refusal = read_refusal(_join(site, run))
    assert refusal is not None
    assert (
        "labels its images in the 'custom' space; the run trains on 'custom': the same "
        "classes in another order" in refusal.error.message
    )
    run["data"]["label_columns"] = list(TRIO.classes)  # the same space: past the label check
    refusal = read_refusal(_join(site, run))
    assert refusal is not None and "labels its images" not in refusal.error.message
