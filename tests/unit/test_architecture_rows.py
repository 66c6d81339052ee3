"""The "typical changes" rows of docs/architecture.md hold: each change touches the files its row names.

Each test below fails when a change skips a file its row says it needs: a round call nobody
answers or nobody makes, a policy term without its row in docs/privacy.md or read nowhere, a
``results.json`` key missing from its schema or from docs/coordinator.md's table, a round step
without its method, and a row naming a file that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path

from clinfl.config.policy import SitePolicy
from clinfl.federation.results_schema import ResultsDocument, RoundEntry
from clinfl.transport.contract import CALLS, ROUND_CALLS
from coordinator.results import RunResults
from coordinator.round_steps import ROUND_STEPS
from coordinator.rounds import Coordinator
from site_agent.agent import SiteAgent

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _typical_changes() -> dict[str, str]:
    """The rows of the "Typical changes" table: change -> the files cell."""
    text = ARCHITECTURE.read_text()
    section = text.split("## Typical changes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("change", "---"):
            rows[cells[0]] = cells[1]
    return rows


def _python_sources(*packages: str) -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text()
        for package in packages
        for path in (ROOT / package).glob("**/*.py")
    }


def test_every_file_a_row_names_exists() -> None:
    rows = _typical_changes()
    assert len(rows) >= 7, rows
    missing = []
    for change, cell in rows.items():
        for path in re.findall(r"`([\w./-]+\.(?:py|md|toml))`", cell):
            if not (ROOT / path).exists():
                missing.append(f"{change!r} names {path}")
    assert missing == []


def test_a_round_call_is_answered_by_the_site_and_made_by_the_coordinator() -> None:
    """Row "add a round call": its row in the contract, its answer, the code that makes it."""
    row = _typical_changes()["add a round call"]
    for path in ("clinfl/transport/contract.py", "site_agent/agent.py"):
        assert path in row
    coordinator_code = "\n".join(_python_sources("coordinator").values())
    problems = []
    for call in ROUND_CALLS:
        if not callable(getattr(SiteAgent, call.name, None)):
            problems.append(f"SiteAgent does not answer {call.name}")
        if not re.search(rf"\.{call.name}\b", coordinator_code):
            problems.append(f"no coordinator code makes the call {call.name}")
    for call in CALLS.values():
        if call.stage is None and call.answer is None:  # answered by the deployed site itself
            handler = f"def _{call.name}("
            deployed = (ROOT / "site_agent/deploy/deployed_site.py").read_text()
            if handler not in deployed:
                problems.append(f"the deployed site has no handler {handler}")
    assert problems == []


def _policy_terms() -> list[str]:
    terms = []
    for section in fields(SitePolicy):
        default = getattr(SitePolicy(), section.name)
        if is_dataclass(default):
            terms.extend(f"{section.name}.{term.name}" for term in fields(default))
    return terms


def test_a_policy_term_has_its_row_and_is_applied_outside_the_config_package() -> None:
    """Row "add a site-side setting": the field, where the site applies it, its docs row."""
    row = _typical_changes()["add a site-side setting (a policy term)"]
    assert "clinfl/config/policy.py" in row and "docs/privacy.md" in row
    privacy_docs = (ROOT / "docs" / "privacy.md").read_text()
    readers = {
        path: text
        for path, text in _python_sources("clinfl", "site_agent", "coordinator").items()
        if not path.startswith("clinfl/config/")
    }
    terms = _policy_terms()
    assert len(terms) >= 20, terms
    problems = []
    for term in terms:
        if f"`{term}`" not in privacy_docs and f"{term}`" not in privacy_docs:
            problems.append(f"{term} has no row in docs/privacy.md's policy table")
        name = term.split(".", 1)[1]
        if not any(re.search(rf"\.{name}\b", text) for text in readers.values()):
            problems.append(f"{term} is read nowhere outside clinfl/config/ (never applied)")
    assert problems == []


def _documented_results_keys() -> list[str]:
    text = (ROOT / "docs" / "coordinator.md").read_text()
    section = re.split(r"^## .*`results.json`$", text, maxsplit=1, flags=re.MULTILINE)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def test_a_results_field_is_in_the_record_its_schema_and_the_docs_table() -> None:
    """Row "add a report field to results.json": results.py, results_schema.py, coordinator.md."""
    row = _typical_changes()["add a report field to `results.json`"]
    for path in (
        "coordinator/results.py",
        "clinfl/federation/results_schema.py",
        "docs/coordinator.md",
    ):
        assert path in row
    record = [f.name for f in fields(RunResults)]
    assert list(ResultsDocument.__annotations__) == record
    assert _documented_results_keys() == record
    rounds_row = next(
        line
        for line in (ROOT / "docs" / "coordinator.md").read_text().splitlines()
        if line.startswith("| `rounds` |")
    )
    undocumented = [key for key in RoundEntry.__annotations__ if f"`{key}`" not in rounds_row]
    assert undocumented == []


def test_a_round_step_has_its_method_in_the_coordinator() -> None:
    """Row "add a step to the coordinator's round": the table entry and its method."""
    row = _typical_changes()["add a step to the coordinator's round"]
    assert "coordinator/round_steps.py" in row and "coordinator/rounds.py" in row
    missing = [
        s.value for s in ROUND_STEPS if not callable(getattr(Coordinator, f"_{s.value}", None))
    ]
    assert missing == []
