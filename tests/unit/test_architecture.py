"""Imports go one way: roles -> core. Only composition roots see both roles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOTS = ("clinfl/cli/", "clinfl/simulation/")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_core_never_imports_a_role_and_roles_never_import_each_other() -> None:
    problems = []
    for path in ROOT.glob("clinfl/**/*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(COMPOSITION_ROOTS):
            continue
        bad = _imports(path) & {"site_agent", "coordinator"}
        if bad:
            problems.append(f"{relative} imports {bad}")
    for role, other in (("site_agent", "coordinator"), ("coordinator", "site_agent")):
        for path in ROOT.glob(f"{role}/**/*.py"):
            if other in _imports(path):
                problems.append(f"{path.relative_to(ROOT)} imports {other}")
    assert problems == []


def test_nothing_is_unpickled() -> None:
    offenders = []
    for package in ("clinfl", "site_agent", "coordinator"):
        for path in ROOT.glob(f"{package}/**/*.py"):
            text = path.read_text()
            if "import pickle" in text or "allow_pickle=True" in text:
                offenders.append(str(path))
            if "torch.load(" in text and "weights_only=True" not in text:
                offenders.append(str(path))
    assert offenders == []


def test_only_the_secagg_protocol_imports_hazmat() -> None:
    offenders = []
    for package in ("clinfl", "site_agent", "coordinator"):
        for path in ROOT.glob(f"{package}/**/*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("clinfl/secagg/"):
                continue
            if "secagg.hazmat" in path.read_text():
                offenders.append(relative)
    assert offenders == []


def test_raw_primitives_live_only_in_hazmat_modules_used_by_their_own_package() -> None:
    offenders = []
    for package in ("clinfl", "site_agent", "coordinator"):
        for path in ROOT.glob(f"{package}/**/*.py"):
            relative = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            if "privacy.hazmat" in text and not relative.startswith("clinfl/privacy/"):
                offenders.append(f"{relative} imports clinfl.privacy.hazmat")
            raw = "cryptography.hazmat.primitives.ciphers" in text
            if raw and "/hazmat/" not in relative:
                offenders.append(f"{relative} uses a raw cipher outside a hazmat module")
    assert offenders == []
