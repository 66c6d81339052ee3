"""The mutation check's own logic (tools/mutation_check.py), fast enough for every CI run.

The check itself (``make mutation-check``) is a slow job; this keeps its table from rotting:
a refactor that moves or duplicates a rule's snippet fails here until the row is updated.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tools import mutation_check
from tools.mutation_check import (
    ATTACK_TESTS,
    MUTATIONS,
    Edit,
    Mutation,
    MutationError,
    apply_mutation,
    attack_test_files,
    copy_files,
    module_name,
    mutation,
    render_markdown,
    snippet_problems,
    source_files,
)

ROOT = Path(__file__).resolve().parents[2]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_snippet_of_the_table_occurs_exactly_once_in_the_source() -> None:
    assert snippet_problems(ROOT, MUTATIONS) == []


def test_the_table_names_every_rule_once_and_the_attack_suite_exists() -> None:
    names = [row.name for row in MUTATIONS]
    assert len(names) == len(set(names))
    for rule in ("R1", "R2", "R3", "R4", "R5 split-proof", "R5 survivor floor", "R6", "R7"):
        assert any(name.startswith(rule) for name in names), rule
    for rule in ("R8", "R9", "quorum", "R7 refusal silence"):
        assert any(name.startswith(rule) for name in names), rule
    tests = attack_test_files(ROOT)
    assert "tests/unit/test_secagg_attacks_thresholds.py" in tests
    assert all((ROOT / name).is_file() for name in tests)
    assert len(tests) >= len([p for p in ATTACK_TESTS if "*" not in p])


def test_each_mutation_applies_to_a_copy_and_leaves_the_source_untouched(tmp_path: Path) -> None:
    files = sorted({edit.path for row in MUTATIONS for edit in row.edits})
    before = {name: _digest(ROOT / name) for name in files}
    for row in MUTATIONS:
        copy = tmp_path / row.name.replace(" ", "-")
        copy_files(ROOT, copy, row.files)
        apply_mutation(copy, row)
        for edit in row.edits:
            text = (copy / edit.path).read_text()
            assert edit.new in text
            if edit.old not in edit.new:
                assert edit.old not in text, row.name
    assert {name: _digest(ROOT / name) for name in files} == before


def test_a_missing_or_ambiguous_snippet_is_reported_and_never_applied(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "rule.py").write_text("def check(x):\n    if x:\n        return 1\n")
    (tmp_path / "pkg" / "twice.py").write_text("a = 1\na = 1\n")
    good = mutation("good", "-", ("pkg/rule.py", "if x:", "if False:"))
    missing = mutation("missing", "-", ("pkg/rule.py", "if y:", "if False:"))
    ambiguous = mutation("ambiguous", "-", ("pkg/twice.py", "a = 1", "a = 2"))
    absent = mutation("absent", "-", ("pkg/gone.py", "x", "y"))
    broken = mutation("broken", "-", ("pkg/rule.py", "if x:", "if x"))
    assert snippet_problems(tmp_path, [good]) == []
    problems = snippet_problems(tmp_path, [good, missing, ambiguous, absent, good])
    assert any("missing: the snippet 'if y:' does not occur" in p for p in problems)
    assert any("ambiguous: the snippet 'a = 1' occurs 2 times" in p for p in problems)
    assert any("absent: pkg/gone.py does not exist" in p for p in problems)
    assert any("good: the name is used twice" in p for p in problems)
    for row in (missing, ambiguous):
        with pytest.raises(MutationError):
            apply_mutation(tmp_path, row)
    assert (tmp_path / "pkg" / "twice.py").read_text() == "a = 1\na = 1\n"
    with pytest.raises(MutationError, match="no longer compiles"):
        apply_mutation(tmp_path, broken)
    assert Mutation("x", "-", (Edit("a/b/__init__.py", "", ""),)).files == ("a/b/__init__.py",)


def test_the_copy_takes_tracked_and_untracked_files_but_nothing_ignored() -> None:
    names = set(source_files(ROOT))
    assert "tools/mutation_check.py" in names
    assert "clinfl/secagg/site_session.py" in names
    assert not any(name.startswith((".venv/", ".git/")) for name in names)
    assert not any("__pycache__" in name for name in names)


def test_module_names_and_the_generated_page() -> None:
    assert module_name("site_agent/deploy/deployed_site.py") == "site_agent.deploy.deployed_site"
    assert module_name("clinfl/__init__.py") == "clinfl"
    record = {
        "generated": "today",
        "source": "working tree",
        "wall_seconds": 1.0,
        "cpu_seconds": 240.0,
        "load_average_15min": 0.5,
        "workers": 2,
        "cpus": 2,
        "python": "3.11",
        "attack_test_files": ["tests/unit/test_x.py"],
        "baseline": {"tests": 3, "skipped": 0, "seconds": 1.0},
        "mutations": [
            {
                "name": "R0 kept",
                "removes": "a rule",
                "files": ["a.py"],
                "detected": True,
                "problem": None,
                "failed": ["test_x::test_a"],
                "tests": 3,
                "seconds": 1.0,
            },
            {
                "name": "R0 lost",
                "removes": "another rule",
                "files": ["b.py"],
                "detected": False,
                "problem": None,
                "failed": [],
                "tests": 3,
                "seconds": 1.0,
            },
        ],
    }
    page = render_markdown(record)
    assert "| R0 kept | a rule | `a.py` | 1 of 3 |" in page
    assert "| R0 lost | another rule | `b.py` | **none**" in page
    assert "4 CPU-minutes, about 2 minutes on 2 idle cores" in " ".join(page.split())


def test_the_script_lists_its_table_without_running_anything() -> None:
    listed = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mutation_check.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert all(row.name in listed for row in MUTATIONS)
    assert mutation_check.MAX_WORKERS == 2
