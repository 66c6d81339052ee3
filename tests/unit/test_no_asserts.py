"""Invariants are explicit checks that raise, never ``assert`` (``python -O`` removes those).

The AST check covers every module of ``clinfl``, ``site_agent`` and ``coordinator``, not only the
ones that hold secrets today (``clinfl/secagg/``: keys, masks, seeds, shares; ``site_agent``'s
agent, ledger and trainer: the update, the reservations, the DP state;
``coordinator/secure_aggregation.py``: the server session). Secret state moves between modules
as the code is refactored, so a list of files would go stale; and no library module needs an
``assert`` (:func:`clinfl.guards.present` narrows a type the same way).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clinfl.config.backbones import block_count, feature_width
from clinfl.errors import ClinflError, InternalError, ProtocolViolation
from clinfl.guards import present
from clinfl.secagg.settings import RoundParameters, plan_round
from tests.support.secagg_round import Federation

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("clinfl", "site_agent", "coordinator")


def _asserts(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_assert_statement_in_library_code(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{line}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line in _asserts(path)
    ]
    assert found == [], "use an explicit check that raises (clinfl.guards.present): " + ", ".join(
        found
    )


def test_the_ast_check_sees_an_assert(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f(x):\n    if x:\n        assert x is not None\n    return x\n")
    assert _asserts(module) == [3]


def test_present_narrows_or_raises_an_internal_error() -> None:
    assert present(0, "zero") == 0
    with pytest.raises(InternalError, match="the thing is missing") as caught:
        present(None, "the thing")
    assert isinstance(caught.value, ClinflError)
    assert caught.value.exit_code == 70 and "report" in caught.value.remedy


def _params(federation: Federation) -> RoundParameters:
    return plan_round(
        round_id=4,
        site_ids=federation.site_ids,
        vector_length=5,
        min_sites=2,
        bits=32,
        weight_cap=4,
        degree=None,
    )


def test_a_site_session_without_its_secret_refuses_and_wipes() -> None:
    """A wiped graph nonce stops the round with a named refusal; it never reaches a message.

    Under ``python -O`` the former ``assert`` was gone and the reveal carried ``None``; with it,
    the failure was only "malformed input (AssertionError)".
    """
    federation = Federation.of(3)
    params = _params(federation)
    sessions = {s: federation.session(s, params) for s in params.site_ids}
    adverts = [session.advertise() for session in sessions.values()]
    victim = sessions["site-00"]
    victim._wipe()  # what an abort does; stands for any path that loses the secret
    with pytest.raises(ProtocolViolation, match="the graph nonce is missing"):
        victim.reveal_graph_nonce(adverts)
    assert victim.aborted
    assert federation.audit and "graph nonce is missing" in federation.audit[-1][1]
    with pytest.raises(ProtocolViolation, match="abandoned"):
        victim.share([])  # an aborted session answers no later stage
    # the other sites are unaffected
    assert sessions["site-01"].reveal_graph_nonce(adverts).nonce is not None


def test_a_session_without_its_self_seed_masks_nothing() -> None:
    federation = Federation.of(3)
    params = _params(federation)
    sessions = {s: federation.session(s, params) for s in params.site_ids}
    adverts = [session.advertise() for session in sessions.values()]
    reveals = [session.reveal_graph_nonce(adverts) for session in sessions.values()]
    sealed = [share for session in sessions.values() for share in session.share(reveals)]
    victim = sessions["site-02"]
    victim._self_seed = None
    inbox = [share for share in sealed if share.receiver == victim.site_id]
    update = np.zeros(params.masked_length, dtype=np.uint32)
    with pytest.raises(ProtocolViolation, match="the self-mask seed is missing"):
        victim.masked_input(inbox, update)
    assert victim.aborted


def test_the_check_holds_under_python_dash_o() -> None:
    script = (
        "from clinfl.errors import ProtocolViolation\n"
        "from tests.support.secagg_round import Federation\n"
        "from clinfl.secagg.settings import plan_round\n"
        "f = Federation.of(3)\n"
        "p = plan_round(round_id=4, site_ids=f.site_ids, vector_length=5, min_sites=2,\n"
        "               bits=32, weight_cap=4, degree=None)\n"
        "s = {i: f.session(i, p) for i in p.site_ids}\n"
        "a = [x.advertise() for x in s.values()]\n"
        "s['site-00']._wipe()\n"
        "try:\n"
        "    print('SENT', s['site-00'].reveal_graph_nonce(a).nonce)\n"
        "except ProtocolViolation as e:\n"
        "    print('REFUSED', e.message)\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("REFUSED") and "graph nonce is missing" in done.stdout


def test_an_unknown_backbone_is_the_documented_key_error() -> None:
    with pytest.raises(KeyError):
        feature_width("resnet50", 64, None)
    with pytest.raises(KeyError):
        block_count("resnet50", None)
    assert (feature_width("densenet121", 64, None), block_count("densenet121", 16)) == (1024, 7)
