"""The Flower App Bundle (FAB) clinfl submits, and the check a site runs on every bundle it is sent.

Flower delivers a run's application code to every SuperNode as a FAB. clinfl's bundle holds
only ``pyproject.toml``: its components name modules of the clinfl installed at each end, and
no code travels. A site never installs or imports a bundle. It checks that the bundle is,
file for file, the one its own clinfl would build (:func:`check_bundle`) and refuses every
message of a run whose bundle differs, so a coordinator cannot push code to a hospital.
"""

from __future__ import annotations

import hashlib
import io
import tomllib
import zipfile
from typing import Any

from clinfl import __version__
from clinfl.errors import ProtocolViolation

APP_NAME = "clinfl-federation"
SERVER_COMPONENT = "coordinator.deploy.server_app:app"
CLIENT_COMPONENT = "site_agent.deploy.client_app:app"
RUN_DIR_KEY = "run-dir"
ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})


def app_pyproject() -> str:
    """Return the bundle's ``pyproject.toml`` for this clinfl version."""
    return f"""\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{__version__}"
description = "clinfl federation: the components are modules of the clinfl installed at each end"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "clinfl"

[tool.flwr.app.components]
serverapp = "{SERVER_COMPONENT}"
clientapp = "{CLIENT_COMPONENT}"

[tool.flwr.app.config]
{RUN_DIR_KEY} = ""
"""


def _refuse(reason: str) -> ProtocolViolation:
    return ProtocolViolation(
        f"refused the run's application bundle: {reason}; this site runs only the clinfl "
        f"{__version__} installed here and never code a coordinator sends",
        remedy="the coordinator must run `clinfl coordinator start` with the same clinfl "
        "version as the site, and submit nothing else",
    )


def check_bundle(content: bytes, *, declared_hash: str) -> None:
    """Check a FAB against the bundle this site's clinfl would build; nothing is installed.

    Raises:
        ProtocolViolation: if the hash does not match the content, the bundle holds any file
            besides ``pyproject.toml`` and its manifest, or its project differs from clinfl's.
    """
    if hashlib.sha256(content).hexdigest() != declared_hash:
        raise _refuse("its content does not match its declared hash")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            names = set(bundle.namelist())
            if names != ALLOWED_FILES:
                extra = sorted(names - ALLOWED_FILES)[:5]
                raise _refuse(f"it carries files clinfl's bundle does not have: {extra}")
            project: dict[str, Any] = tomllib.loads(bundle.read("pyproject.toml").decode())
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError):
        raise _refuse("it is not a readable bundle") from None
    expected = tomllib.loads(app_pyproject())
    if project != expected:
        version = project.get("project", {}).get("version", "?")
        raise _refuse(f"its project (version {version!s:.20}) is not clinfl {__version__}'s")
