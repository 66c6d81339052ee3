"""A site accepts only clinfl's own code-free bundle, checked file by file; it never installs one."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from flwr.cli.build import build_fab_from_files

from clinfl.errors import ProtocolViolation
from clinfl.transport.flower.bundle import CLIENT_COMPONENT, app_pyproject, check_bundle


def _bundle(files: dict[str, bytes]) -> bytes:
    content, _ = build_fab_from_files(files)
    return content


def _check(content: bytes) -> None:
    check_bundle(content, declared_hash=hashlib.sha256(content).hexdigest())


def test_clinfl_bundle_as_flower_builds_it_is_accepted() -> None:
    content = _bundle({"pyproject.toml": app_pyproject().encode()})
    _check(content)
    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        assert sorted(bundle.namelist()) == [".info/CONTENT", "pyproject.toml"]


@pytest.mark.parametrize(
    ("files", "why"),
    [
        (
            {"pyproject.toml": app_pyproject().encode(), "evil.py": b"open('/tmp/x', 'w')"},
            "carries files",
        ),
        (
            {"pyproject.toml": app_pyproject().replace(CLIENT_COMPONENT, "evil:app").encode()},
            "is not clinfl",
        ),
        (
            {"pyproject.toml": app_pyproject().replace('version = "', 'version = "9').encode()},
            "is not clinfl",
        ),
    ],
)
def test_a_tampered_bundle_is_refused(files: dict[str, bytes], why: str) -> None:
    with pytest.raises(ProtocolViolation, match=why):
        _check(_bundle(files))


def test_a_bundle_that_does_not_match_its_hash_or_is_not_a_zip_is_refused() -> None:
    content = _bundle({"pyproject.toml": app_pyproject().encode()})
    with pytest.raises(ProtocolViolation, match="declared hash"):
        check_bundle(content, declared_hash="0" * 64)
    garbage = b"PK\x03\x04 not really a zip"
    with pytest.raises(ProtocolViolation, match="not a readable bundle"):
        _check(garbage)
