"""Mutation check: remove each security rule in turn and see which attack tests fail.

SECAGG.md ("Version 3", mutation check) asks that removing any security rule from the site's
code makes at least one attack test fail. This script holds one row per rule
(:data:`MUTATIONS`): the file, an exact source snippet that must occur there exactly once, and
the replacement that disables the rule. For each row it copies the repository (tracked and
untracked, not ignored, files) into a temporary folder, applies that one mutation to the copy,
and runs the attack suite (:data:`ATTACK_TESTS`) there with the copy first on ``sys.path``.
The working tree is never written to, so nothing is left mutated after a crash or Ctrl-C.

Before it trusts any result it checks that the tests really import the copy, not the editable
install in ``.venv``: every mutated module must resolve inside the copy, and a canary run (the
copy's ``clinfl/__init__.py`` raises) must fail every test with the canary's message. An
unmutated baseline run must pass.

It fails (exit status 1) if a snippet is missing or occurs more than once (so the table cannot
rot silently when code moves), if any mutation leaves every attack test green, or if a mutation
only breaks imports. It prints the rule-by-test table and, after a full run, writes it to
``benchmarks/results/mutation_check.json`` and ``docs/mutation-check.md``.

Usage::

    python tools/mutation_check.py                 # every row, 2 workers (make mutation-check)
    python tools/mutation_check.py --list          # the table, without running anything
    python tools/mutation_check.py --snippets      # only check that every snippet occurs once
    python tools/mutation_check.py --only R4 --only quorum   # some rows (nothing written)
    python tools/mutation_check.py --rev HEAD      # check a commit instead of the working tree

To add a rule: append a :func:`mutation` row to :data:`MUTATIONS` (a short unique name, what it
removes, and one or more ``(file, snippet, replacement)`` edits); to add attack tests, extend
:data:`ATTACK_TESTS`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks/results/mutation_check.json")
DOC = Path("docs/mutation-check.md")
MAX_WORKERS = 2
RUN_TIMEOUT_S = 600

# The attack suite: test files (glob patterns are allowed; a plain path must exist).
ATTACK_TESTS: tuple[str, ...] = (
    "tests/unit/test_secagg_attacks*.py",
    "tests/unit/test_attack*.py",
    "tests/unit/test_secagg_malicious_coordinator.py",
    "tests/unit/test_secagg_protocol_checks.py",
    "tests/unit/test_deployed_refusals.py",
    "tests/unit/test_deployed_join.py",
    "tests/unit/test_secagg_*binding*.py",  # R1' and the other "Version 3" rules
    "tests/unit/test_fresh_randomness.py",  # R10
    "tests/unit/test_local_steps.py",  # R7': fixed steps where counts stay at the site
    "tests/integration/test_deployed_run_binding.py",  # R1', R3', R7' over the deployed path
    "tests/integration/test_federated_evaluation.py",  # R7: evaluation only as a masked sum
)

PYTEST_ARGS: tuple[str, ...] = (
    "-q",
    "-p",
    "no:cacheprovider",
    "--tb=line",
    "--hypothesis-seed=0",  # the random adversary draws the same examples in every run
)

CANARY = "clinfl mutation-check canary: the tests imported the mutated copy"


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly once in ``path``) with ``new``."""

    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    """One security rule and the edits that remove it."""

    name: str
    removes: str
    edits: tuple[Edit, ...]

    @property
    def files(self) -> tuple[str, ...]:
        """The files this mutation edits, in order, without repeats."""
        return tuple(dict.fromkeys(edit.path for edit in self.edits))


def mutation(name: str, removes: str, *edits: tuple[str, str, str]) -> Mutation:
    """Return a table row: ``edits`` are ``(file, exact snippet, replacement)``."""
    return Mutation(name, removes, tuple(Edit(*edit) for edit in edits))


SESSION = "clinfl/secagg/site_session.py"
ADVERTISE = "clinfl/secagg/advertise.py"
CONSISTENCY = "clinfl/secagg/consistency.py"
AGENT = "site_agent/agent.py"
DEPLOYED = "site_agent/deploy/deployed_site.py"

# One row per security rule (SECAGG.md "Version 2" R1 to R9, the floor, the quorum, "Version 3").
MUTATIONS: tuple[Mutation, ...] = (
    mutation(
        "R1 transcript binding",
        "advertisements bound to another roster, run, round, parameters or model are accepted",
        (
            ADVERTISE,
            "different = binding.differences(advert.binding)",
            "different: list[str] = []",
        ),
    ),
    mutation(
        "R2 round ids",
        "the site forgets the last round id: any round id, replays included, is accepted",
        ("site_agent/round_guard.py", "last = store.last_round(run_id)", "last = None"),
    ),
    mutation(
        "R3 graph commitments",
        "a graph reveal need not open the site's commitment",
        (
            ADVERTISE,
            "elif graph_commitment(reveal.site_id, advert.binding, reveal.nonce) != (",
            "elif False and graph_commitment(reveal.site_id, advert.binding, reveal.nonce) != (",
        ),
    ),
    mutation(
        "R3 every reveal (sparse graph)",
        "on a sparse graph a site goes on when some advertised site's reveal is missing",
        (ADVERTISE, "if missing and require_all:", "if False:"),
    ),
    mutation(
        "R3 graph from the nonces",
        "the sparse graph's seed ignores the revealed nonces (a fixed seed)",
        (SESSION, "seed=graph_seed(opened)", "seed=bytes(32)"),
    ),
    mutation(
        "R4 U3 subset of U2",
        "a site signs U3 with neighbours it never received shares from or masked with",
        (
            SESSION,
            "unmasked = (survivors & self._neighbours) - self._held.keys()",
            "unmasked: frozenset[str] = frozenset()",
        ),
    ),
    mutation(
        "R5 split-proof threshold",
        "the threshold is not checked against the share holders (check_holders)",
        (
            SESSION,
            "lambda: check_holders(params, holders=len(holders), requirements=self._requirements)",
            "lambda: None",
        ),
    ),
    mutation(
        "R5 survivor floor",
        "U3 (and the advertised sites) need only reach t, not min_sites + c",
        (
            "clinfl/secagg/settings.py",
            "return max(threshold, self.min_sites + self.max_colluders)",
            "return threshold",
        ),
    ),
    mutation(
        "R6 survivor signatures",
        "survivor signatures are not verified (replays from another session pass)",
        (CONSISTENCY, "elif not verify(public, item.signature, payload):", "elif False:"),
    ),
    mutation(
        "quorum",
        "a site reveals without t signers among each neighbour's holders",
        (CONSISTENCY, "if count < threshold:", "if False:"),
    ),
    mutation(
        "R7 refusal silence",
        "a round call's refusal goes back to the coordinator with its reason",
        (DEPLOYED, "error = withheld_refusal(error, site_id=self.site_id, call=call)", "pass"),
    ),
    mutation(
        "R7 training report carries nothing",
        "the training report carries the site's sample count",
        (
            "clinfl/federation/messages.py",
            "    epsilon_spent: float | None = None\n",
            "    epsilon_spent: float | None = None\n    num_samples: int | None = None\n",
        ),
        (
            AGENT,
            "return TrainingReport(self.site_id, spent)",
            "return TrainingReport(self.site_id, spent, self._pending.num_samples)",
        ),
    ),
    mutation(
        "R7 counts only by consent",
        "the sample count goes into the masked vector whatever reporting.metrics says",
        (AGENT, "if not self._report_counts:", "if False:"),
    ),
    mutation(
        "R7 settings within policy bounds",
        "round settings (learning rate, epochs, batch size) are not checked against the policy",
        (AGENT, "if self._check_settings is not None:", "if False:"),
    ),
    mutation(
        "R1' run configuration bound",
        "advertisements bound to another run configuration (config_hash) are accepted",
        (
            "clinfl/secagg/transcript.py",
            'names = ("roster_hash", "run_id", "round_id", "params_hash", "model_hash", '
            '"config_hash")',
            'names = ("roster_hash", "run_id", "round_id", "params_hash", "model_hash")',
        ),
    ),
    mutation(
        "R1' settings are the run's",
        "round settings other than the joined run configuration's are accepted",
        (AGENT, "if settings != expected:", "if False:"),
    ),
    mutation(
        "R1' no foreign aux/ slots",
        "a global state with entries the site's algorithm does not produce is accepted",
        (AGENT, "problem = layout_problem(global_state, self._layout)", "problem = None"),
    ),
    mutation(
        "R1' session nonce used once",
        "a session nonce may be reused, and one training may take part in several sessions",
        (
            AGENT,
            "if params.round_id == received.settings.round and not self._use_session(params):",
            "if False and not self._use_session(params):",
        ),
    ),
    mutation(
        "R1' session nonce bound",
        "the session nonce is left out of the round parameters' hash",
        ("clinfl/secagg/settings.py", "            self.session.encode(),\n", '            b"",\n'),
    ),
    mutation(
        "R3' retry cap",
        "a coordinator may retry an uncompleted round without limit",
        (
            "site_agent/round_guard.py",
            "if retry and store.attempts(run_id, round_id) > max_retries:",
            "if False:",
        ),
    ),
    mutation(
        "R7' training failure is a zero update",
        "a local training that diverges is a refusal the coordinator sees",
        (AGENT, "except LocalTrainingFailed as failure:", "except StopAsyncIteration as failure:"),
    ),
    mutation(
        "R7' numerical errors are training failures",
        "a numerical error inside local steps escapes as an error, not a zero update",
        (
            "site_agent/training.py",
            "except (RuntimeError, ValueError, ArithmeticError) as error:  # numerics the data "
            "caused\n            strategy.recover()",
            "except StopAsyncIteration as error:\n            strategy.recover()",
        ),
    ),
    mutation(
        "R7' fixed steps where counts stay",
        "a site that keeps its sample count trains by epochs (its work follows its size)",
        (
            "clinfl/training_bounds.py",
            "violation = training_mode_violation(policy, local_steps)",
            "violation = None",
        ),
    ),
    mutation(
        "R10 one update per global model",
        "a site trains a global model it already sent a completed update from",
        ("site_agent/round_guard.py", "if store.contributed(model_hash):", "if False:"),
    ),
    mutation(
        "R10 fresh randomness (plain)",
        "plain training shuffles the same way on every call",
        (
            "site_agent/training.py",
            "        self._generator = fresh_generator(self._random_bytes)\n",
            "        self._generator = torch.Generator().manual_seed(0)\n",
        ),
    ),
    mutation(
        "R10 fresh randomness (DP-SGD)",
        "DP-SGD's Poisson sampling draws the same batches on every call",
        (
            "site_agent/private_training.py",
            'self._generator.manual_seed(int.from_bytes(self._random_bytes(8), "big"))',
            "self._generator.manual_seed(0)",
        ),
    ),
    mutation(
        "R3' abandoned attempts capped",
        "a coordinator may abandon a site's attempts without limit (probing under new round ids)",
        ("site_agent/round_guard.py", "if abandoned >= max_abandoned:", "if False:"),
    ),
    mutation(
        "R3' a skipped round id is done",
        "a skipped round id may be taken again as a retry",
        (
            "site_agent/round_guard.py",
            "if round_id != last_id + 1:  # taken as done, so it is not retried as an uncompleted "
            "one\n            store.set_last_round(run_id, round_id, completed=True)",
            "if round_id != last_id + 1:\n            store.set_last_round(run_id, round_id)",
        ),
    ),
    mutation(
        "R7' a failed training takes its time",
        "a failed training stops stepping at its first bad step (its latency tells the "
        "coordinator; under DP-SGD a forward without its backward breaks the site's next round)",
        (
            "site_agent/training.py",
            "            strategy.step(loss, reference, memory, settings.lr)  # a failed round "
            "steps too\n",
            "            if not math.isfinite(value):\n"
            "                return f'local loss became {value}'\n"
            "            strategy.step(loss, reference, memory, settings.lr)\n",
        ),
    ),
    mutation(
        "R10 no optimiser state across rounds (plain)",
        "AdamW's moments outlive a round (a crafted model can freeze a site's later rounds)",
        (
            "site_agent/training.py",
            "        self._optimizer.state.clear()",
            "        pass",
        ),
    ),
    mutation(
        "R10 no optimiser state across rounds (DP-SGD)",
        "Opacus' AdamW keeps its moments from one round to the next",
        ("site_agent/private_training.py", "        self.optimizer.state.clear()", "        pass"),
    ),
    mutation(
        "R10 bounded algorithm memory",
        "a crafted round may leave a huge (finite) control variate for the site's next round",
        (
            "site_agent/training.py",
            "self._memory = bounded_memory(memory)",
            "self._memory = memory",
        ),
    ),
    mutation(
        "R10 one update per model across runs",
        "the one-update-per-model rule is kept per run id (a new join resets it)",
        (
            "site_agent/ledger.py",
            '"SELECT 1 FROM attempts WHERE model_hash = ? AND completed = 1", (model_hash.hex(),)',
            '"SELECT 1 FROM attempts WHERE model_hash = ? AND completed = 1 AND run_id = \'x\'", '
            "(model_hash.hex(),)",
        ),
    ),
    mutation(
        "R10 models compared canonically",
        "a model with -0.0 for 0.0 counts as a new model",
        (
            AGENT,
            "                site_id=self.site_id,\n"
            "                model_hash=canonical_state_digest(global_state),",
            "                site_id=self.site_id,\n                model_hash=model_hash,",
        ),
    ),
    mutation(
        "R8 join carries no paths",
        "a join's run configuration may name local paths",
        (DEPLOYED, "named = named_path_fields(document)", "named: list[str] = []"),
    ),
    mutation(
        "R7 no clear evaluation",
        "a site of a secure run answers `evaluate` with its own metrics in the clear",
        (
            DEPLOYED,
            "if joined.run.secagg.enabled or joined.policy.secagg.required:",
            "if False:",
        ),
    ),
    mutation(
        "R7 evaluation purpose",
        "a site masks its evaluation counts in a training session, or its update in an "
        "evaluation session",
        (AGENT, "if params.purpose != held:", "if False:"),
    ),
    mutation(
        "R7 one evaluation per round and model",
        "a site scores a round, or a model, again: two sums of one model can be differenced",
        (AGENT, "if why_not is not None:", "if False:"),
    ),
    mutation(
        "R9 fail closed",
        "an exception other than ProtocolViolation escapes a stage unaudited, secrets kept",
        (
            "clinfl/secagg/fail_closed.py",
            "except Exception as error:",
            "except StopAsyncIteration as error:",
        ),
    ),
)


class MutationError(Exception):
    """A mutation cannot be applied as written (its snippet is missing or ambiguous)."""


# The table ---------------------------------------------------------------------------------------
def snippet_problems(root: Path, mutations: Iterable[Mutation] = MUTATIONS) -> list[str]:
    """Return every problem with the table against the source under ``root`` (none: usable)."""
    problems: list[str] = []
    names: set[str] = set()
    for row in mutations:
        if row.name in names:
            problems.append(f"{row.name}: the name is used twice")
        names.add(row.name)
        if not row.edits:
            problems.append(f"{row.name}: no edit")
        for edit in row.edits:
            path = root / edit.path
            if not path.is_file():
                problems.append(f"{row.name}: {edit.path} does not exist")
                continue
            count = path.read_text().count(edit.old)
            if count != 1:
                where = "does not occur" if count == 0 else f"occurs {count} times"
                problems.append(f"{row.name}: the snippet {edit.old!r} {where} in {edit.path}")
            if edit.old == edit.new:
                problems.append(f"{row.name}: the replacement of {edit.old!r} changes nothing")
    return problems


def apply_mutation(tree: Path, row: Mutation) -> None:
    """Apply ``row``'s edits to the copy at ``tree``; each edited file must still compile.

    Raises:
        MutationError: if a snippet does not occur exactly once, or an edited file no longer
            compiles.
    """
    for edit in row.edits:
        path = tree / edit.path
        text = path.read_text()
        count = text.count(edit.old)
        if count != 1:
            raise MutationError(f"{row.name}: {edit.old!r} occurs {count} times in {edit.path}")
        path.write_text(text.replace(edit.old, edit.new))
    for name in row.files:
        source = (tree / name).read_text()
        try:
            compile(source, name, "exec")
        except SyntaxError as error:
            raise MutationError(f"{row.name}: {name} no longer compiles ({error})") from None


def module_name(path: str) -> str:
    """Return the dotted module name of a source file (``a/b/__init__.py`` is ``a.b``)."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def attack_test_files(root: Path, patterns: Sequence[str] = ATTACK_TESTS) -> list[str]:
    """Return the attack test files under ``root`` (sorted).

    Raises:
        MutationError: if a plain (non-glob) path does not exist.
    """
    found: set[str] = set()
    for pattern in patterns:
        if any(char in pattern for char in "*?["):
            found.update(path.relative_to(root).as_posix() for path in root.glob(pattern))
        elif (root / pattern).is_file():
            found.add(pattern)
        else:
            raise MutationError(f"the attack test file {pattern} does not exist")
    return sorted(found)


# Copies ------------------------------------------------------------------------------------------
def source_files(root: Path) -> list[str]:
    """Return the repository's files: tracked and untracked, not ignored, that exist."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    names = sorted({name for name in listed.split("\0") if name})
    return [name for name in names if (root / name).is_file() and not (root / name).is_symlink()]


def copy_files(root: Path, dest: Path, names: Iterable[str]) -> None:
    """Copy ``names`` (relative to ``root``) to ``dest``, keeping their folders."""
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def export_source(root: Path, dest: Path, *, rev: str | None) -> None:
    """Write the source to check into ``dest``: the working tree, or commit ``rev``."""
    dest.mkdir(parents=True)
    if rev is None:
        copy_files(root, dest, source_files(root))
        return
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=root, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


# Running the suite -------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one run of the attack suite gave."""

    label: str
    returncode: int
    seconds: float
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    collection_errors: list[str] = field(default_factory=list)
    skipped: int = 0
    timed_out: bool = False
    output: str = ""

    @property
    def total(self) -> int:
        """Tests that ran (passed or failed)."""
        return len(self.passed) + len(self.failed)


class Runner:
    """Runs pytest in copies, killing every child it started when it is stopped."""

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._children: set[subprocess.Popen[bytes]] = set()

    def environment(self, tree: Path) -> dict[str, str]:
        """The environment of a run in ``tree``: the copy first on ``sys.path``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def _run(self, command: list[str], tree: Path, log: Path) -> tuple[int, bool]:
        if self.stopping.is_set():
            raise KeyboardInterrupt
        with log.open("wb") as out:
            child = subprocess.Popen(
                command,
                cwd=tree,
                env=self.environment(tree),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one
            )
            with self._lock:
                self._children.add(child)
            try:
                returncode, timed_out = child.wait(timeout=self.timeout), False
            except subprocess.TimeoutExpired:
                _kill(child)
                returncode, timed_out = child.wait(), True
            finally:
                with self._lock:
                    self._children.discard(child)
        if self.stopping.is_set():  # killed by stop(): its result means nothing
            raise KeyboardInterrupt
        return returncode, timed_out

    def stop(self) -> None:
        """Kill every running child (and its process group); start no more."""
        self.stopping.set()
        with self._lock:
            children = list(self._children)
        for child in children:
            _kill(child)

    def probe(self, tree: Path, modules: Sequence[str]) -> dict[str, str]:
        """Import ``modules`` as a run in ``tree`` would; return where each came from."""
        code = (
            "import importlib, json, sys\n"
            "print(json.dumps({n: importlib.import_module(n).__file__ for n in sys.argv[1:]}))\n"
        )
        log = tree / ".mutation-probe.log"
        returncode, _ = self._run([sys.executable, "-c", code, *modules], tree, log)
        text = log.read_text(errors="replace")
        if returncode != 0:
            raise MutationError(f"the import probe failed:\n{text[-3000:]}")
        found: dict[str, str] = json.loads(text.strip().splitlines()[-1])
        return found

    def suite(self, label: str, tree: Path, tests: Sequence[str]) -> RunResult:
        """Run the attack suite in ``tree``."""
        report = tree / ".mutation-junit.xml"
        log = tree / ".mutation-pytest.log"
        command = [sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--junitxml={report}", *tests]
        start = time.monotonic()
        returncode, timed_out = self._run(command, tree, log)
        result = RunResult(label, returncode, time.monotonic() - start, timed_out=timed_out)
        result.output = log.read_text(errors="replace")
        if report.is_file():
            _read_junit(report, result)
        return result


def _kill(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def _read_junit(report: Path, result: RunResult) -> None:
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        test = f"{classname.removeprefix('tests.unit.')}::{name}" if classname else name
        outcomes = {child.tag for child in case}
        if not classname and "error" in outcomes:
            result.collection_errors.append(name)
        elif outcomes & {"failure", "error"}:
            result.failed.append(test)
        elif "skipped" in outcomes:
            result.skipped += 1
        else:
            result.passed.append(test)


# One mutation ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """A mutation's verdict."""

    row: Mutation
    run: RunResult | None
    problem: str | None = None

    @property
    def detected(self) -> bool:
        """True when at least one attack test failed, and not because imports broke."""
        return self.problem is None and self.run is not None and bool(self.run.failed)


def _fresh_copy(pristine: Path, work: Path, label: str) -> Path:
    safe = "".join(char if char.isalnum() else "-" for char in label).strip("-")
    tree = Path(tempfile.mkdtemp(prefix=f"{safe[:40]}-", dir=work))
    shutil.copytree(pristine, tree, dirs_exist_ok=True, symlinks=True)
    return tree


def run_mutation(
    runner: Runner, pristine: Path, work: Path, row: Mutation, tests: Sequence[str]
) -> Outcome:
    """Apply ``row`` to a fresh copy of ``pristine`` and run the suite there."""
    tree = _fresh_copy(pristine, work, row.name)
    try:
        apply_mutation(tree, row)
    except MutationError as error:
        return Outcome(row, None, str(error))
    try:
        run = runner.suite(row.name, tree, tests)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    if run.timed_out:
        return Outcome(row, run, f"the suite ran past {runner.timeout:.0f} s")
    if run.collection_errors or (run.failed and not run.passed):
        return Outcome(row, run, "the mutation breaks imports or every test: it removes no rule")
    if run.returncode not in (0, 1):
        return Outcome(row, run, f"pytest exited with status {run.returncode}")
    return Outcome(row, run)


def _plant_canary(tree: Path) -> None:
    init = tree / "clinfl" / "__init__.py"
    init.write_text(init.read_text() + f"\nraise RuntimeError({CANARY!r})\n")


def check_isolation(
    runner: Runner, pristine: Path, work: Path, tests: Sequence[str], rows: Sequence[Mutation]
) -> tuple[RunResult, RunResult]:
    """Check that runs import the copy, that the canary trips and that the baseline passes.

    Returns the baseline run and the canary run.

    Raises:
        MutationError: if any of the three fails.
    """
    modules = sorted({module_name(name) for row in rows for name in row.files})
    tree = _fresh_copy(pristine, work, "probe")
    try:
        found = runner.probe(tree, ["clinfl", "site_agent", "coordinator", *modules])
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    outside = {
        name: path
        for name, path in found.items()
        if not Path(path).resolve().is_relative_to(tree.resolve())
    }
    if outside:
        raise MutationError(f"modules imported from outside the copy: {outside}")

    def baseline() -> RunResult:
        tree = _fresh_copy(pristine, work, "baseline")
        try:
            return runner.suite("baseline", tree, tests)
        finally:
            shutil.rmtree(tree, ignore_errors=True)

    def canary() -> RunResult:
        tree = _fresh_copy(pristine, work, "canary")
        try:
            _plant_canary(tree)
            return runner.suite("canary", tree, tests)
        finally:
            shutil.rmtree(tree, ignore_errors=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        base_future, canary_future = pool.submit(baseline), pool.submit(canary)
        try:
            base, trip = base_future.result(), canary_future.result()
        except BaseException:
            runner.stop()  # before the pool's exit waits for its threads
            raise
    if trip.passed or not trip.returncode or CANARY not in trip.output:
        raise MutationError(
            "the canary did not trip: the tests may import the editable install, not the copy "
            f"({len(trip.passed)} tests passed with a raising clinfl/__init__.py)"
        )
    if base.failed or base.collection_errors or base.returncode != 0 or not base.passed:
        raise MutationError(
            "the unmutated attack suite does not pass, so no mutation can be judged:\n"
            + "\n".join(base.failed + base.collection_errors)
            + "\n"
            + base.output[-3000:]
        )
    return base, trip


# Reporting ---------------------------------------------------------------------------------------
def table_rows(outcomes: Sequence[Outcome]) -> list[tuple[str, str, str]]:
    """Return ``(rule, count, tests)`` for each outcome."""
    rows = []
    for outcome in outcomes:
        if outcome.problem is not None:
            rows.append((outcome.row.name, "error", outcome.problem))
        else:
            assert outcome.run is not None
            failed = outcome.run.failed
            rows.append((outcome.row.name, f"{len(failed)} of {outcome.run.total}", _names(failed)))
    return rows


def _names(tests: Sequence[str]) -> str:
    return ", ".join(tests) if tests else "NONE: the rule can be removed with every test green"


def print_table(outcomes: Sequence[Outcome]) -> None:
    """Print the rule-by-test table."""
    width = max(len(outcome.row.name) for outcome in outcomes)
    for rule, count, tests in table_rows(outcomes):
        print(f"{rule:<{width}}  {count:>9}  {tests}")


def write_reports(
    root: Path,
    outcomes: Sequence[Outcome],
    *,
    tests: Sequence[str],
    baseline: RunResult,
    wall_seconds: float,
    cpu_seconds: float,
    workers: int,
    source: str,
) -> None:
    """Write the JSON results and the Markdown page under ``root``."""
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    record = {
        "generated": generated,
        "source": source,
        "wall_seconds": round(wall_seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),  # every run's processes, user and system
        "load_average_15min": round(os.getloadavg()[2], 2),  # other work on the machine
        "workers": workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "attack_test_files": list(tests),
        "baseline": {
            "tests": baseline.total,
            "skipped": baseline.skipped,
            "seconds": round(baseline.seconds, 1),
        },
        "mutations": [
            {
                "name": outcome.row.name,
                "removes": outcome.row.removes,
                "files": list(outcome.row.files),
                "detected": outcome.detected,
                "problem": outcome.problem,
                "failed": [] if outcome.run is None else outcome.run.failed,
                "tests": None if outcome.run is None else outcome.run.total,
                "seconds": None if outcome.run is None else round(outcome.run.seconds, 1),
            }
            for outcome in outcomes
        ],
    }
    (root / RESULTS).parent.mkdir(parents=True, exist_ok=True)
    (root / RESULTS).write_text(json.dumps(record, indent=2) + "\n")
    (root / DOC).write_text(render_markdown(record))


def render_markdown(record: dict[str, object]) -> str:
    """Return docs/mutation-check.md for a results record."""
    mutations = record["mutations"]
    baseline = record["baseline"]
    assert isinstance(mutations, list) and isinstance(baseline, dict)
    files = record["attack_test_files"]
    assert isinstance(files, list)
    wall, cpu, load = record["wall_seconds"], record["cpu_seconds"], record["load_average_15min"]
    assert isinstance(wall, float | int) and isinstance(cpu, float | int)
    workers = record["workers"]
    assert isinstance(workers, int)
    minutes, idle_minutes = wall / 60, cpu / 60 / workers
    lines = [
        "# Mutation check: every security rule has a test that fails without it",
        "",
        "<!-- generated by tools/mutation_check.py; do not edit by hand -->",
        "",
        "`tools/mutation_check.py` removes each security rule of the site's code in turn",
        '(SECAGG.md "Version 2" R1 to R9, the survivor floor, the signature quorum, and',
        '"Version 3"), one at a time, in a temporary copy of the repository, and runs the attack',
        "tests against the mutated copy. A rule whose removal leaves every attack test green is",
        "a rule CI does not protect, and the check fails. It also fails when a row's source",
        "snippet no longer occurs exactly once (code moved: update the row), and it refuses to",
        "report unless a canary run shows that the tests import the copy and not the editable",
        "install. The working tree is never modified. Run it with `make mutation-check`. It is a",
        f"slow job, not part of `make test`: its runs take {cpu / 60:.0f} CPU-minutes, about",
        f"{idle_minutes:.0f} minutes on {workers} idle cores, more than the 3 minutes CI can",
        "spare. `tests/unit/test_mutation_check.py`, which runs in CI, checks that every snippet",
        "of the table still occurs exactly once in the source.",
        "",
        f"Measured {record['generated']} on the {record['source']}, {record['cpus']} CPUs, "
        f"{record['workers']} workers, Python {record['python']}: {baseline['tests']} attack "
        f"tests in {len(files)} files ({baseline['seconds']} s for one unmutated run), "
        f"{len(mutations)} mutations, {minutes:.1f} minutes wall time at a 15-minute load average "
        f"of {load} (other work shared the machine), {cpu / 60:.1f} CPU-minutes.",
        "",
        "| rule removed | what the mutation does | file(s) | attack tests that fail |",
        "| --- | --- | --- | --- |",
    ]
    for item in mutations:
        assert isinstance(item, dict)
        where = ", ".join(f"`{name}`" for name in item["files"])
        if item["problem"] is not None:
            verdict = f"**error**: {item['problem']}"
        elif not item["failed"]:
            verdict = "**none**: the rule can be removed with every attack test green"
        else:
            verdict = f"{len(item['failed'])} of {item['tests']}"
        lines.append(f"| {item['name']} | {item['removes']} | {where} | {verdict} |")
    lines += ["", "## The tests that fail, rule by rule", ""]
    for item in mutations:
        assert isinstance(item, dict)
        lines.append(f"- **{item['name']}**: " + _names([f"`{t}`" for t in item["failed"]]))
    lines += [
        "",
        "## Attack test files",
        "",
        *[f"- `{name}`" for name in files],
        "",
        "## Adding a rule",
        "",
        "Append a row to `MUTATIONS` in `tools/mutation_check.py`: a short name, what the",
        "mutation removes, and one or more `(file, exact snippet, replacement)` edits. The snippet",
        "must occur exactly once in its file. Run `python tools/mutation_check.py --only NAME` to",
        "try the row, then `make mutation-check` to regenerate this page. New attack test files",
        "go into `ATTACK_TESTS`.",
        "",
    ]
    return "\n".join(lines)


# Main --------------------------------------------------------------------------------------------
def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument(
        "--snippets", action="store_true", help="only check that every snippet occurs once"
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only these rows"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(MAX_WORKERS, os.cpu_count() or 1),
        help=f"parallel runs (at most {MAX_WORKERS})",
    )
    parser.add_argument("--timeout", type=float, default=RUN_TIMEOUT_S, help="seconds per run")
    parser.add_argument("--rev", help="check this commit (git archive) instead of the working tree")
    parser.add_argument(
        "--no-write", action="store_true", help="do not write the JSON and Markdown reports"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help=f"only regenerate {DOC} from {RESULTS} (after editing the page's template)",
    )
    return parser.parse_args(argv)


def _selected(only: Sequence[str]) -> tuple[Mutation, ...]:
    if not only:
        return MUTATIONS
    known = {row.name: row for row in MUTATIONS}
    chosen = []
    for name in only:
        matches = [row for row in MUTATIONS if name == row.name or name in row.name]
        if not matches:
            raise SystemExit(f"no mutation named {name!r}; known: {', '.join(known)}")
        chosen += [row for row in matches if row not in chosen]
    return tuple(chosen)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mutation check; return the exit status."""
    options = _parse(argv)
    rows = _selected(options.only)
    if options.render:
        (ROOT / DOC).write_text(render_markdown(json.loads((ROOT / RESULTS).read_text())))
        print(f"wrote {DOC}")
        return 0
    if options.list:
        for row in rows:
            files = ", ".join(row.files)
            print(f"{row.name:<36} {files}: {row.removes}")
        return 0
    workers = max(1, min(MAX_WORKERS, options.workers))
    # SIGTERM unwinds like Ctrl-C: the children are killed and the copies removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runner = Runner(timeout=options.timeout)
    start, cpu_start = time.monotonic(), _children_cpu()
    with tempfile.TemporaryDirectory(prefix="clinfl-mutation-") as scratch:
        work = Path(scratch)
        pristine = work / "pristine"
        export_source(ROOT, pristine, rev=options.rev)
        problems = snippet_problems(pristine, rows)
        if problems:
            print("The mutation table does not match the source:", file=sys.stderr)
            print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
            return 1
        if options.snippets:
            print(f"every snippet of {len(rows)} mutations occurs exactly once")
            return 0
        try:
            tests = attack_test_files(pristine)
            print(f"attack suite: {len(tests)} files; checking that runs import the copy ...")
            baseline, _ = check_isolation(runner, pristine, work, tests, rows)
            print(
                f"baseline: {baseline.total} tests pass ({baseline.seconds:.1f} s); canary "
                f"tripped; {len(rows)} mutations on {workers} workers ..."
            )
            outcomes = _run_all(runner, pristine, work, rows, tests, workers)
        except MutationError as error:
            print(f"mutation check refused: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("mutation check interrupted; the copies are removed", file=sys.stderr)
            return 130
        finally:
            runner.stop()
    wall, cpu = time.monotonic() - start, _children_cpu() - cpu_start
    print()
    print_table(outcomes)
    print(
        f"\n{len(outcomes)} mutations, {wall:.0f} s wall time on {workers} workers, "
        f"{cpu:.0f} CPU-seconds"
    )
    if not options.only and not options.no_write:
        source = _describe_source(ROOT, options.rev)
        write_reports(
            ROOT,
            outcomes,
            tests=tests,
            baseline=baseline,
            wall_seconds=wall,
            cpu_seconds=cpu,
            workers=workers,
            source=source,
        )
        print(f"wrote {RESULTS} and {DOC}")
    failing = [outcome for outcome in outcomes if not outcome.detected]
    for outcome in failing:
        why = outcome.problem or "every attack test stays green without it"
        print(f"FAIL {outcome.row.name}: {why}", file=sys.stderr)
    return 1 if failing else 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _describe_source(root: Path, rev: str | None) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", rev or "HEAD")
    if rev is not None:
        return f"commit {commit}"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return f"working tree (commit {commit}{' with uncommitted changes' if dirty else ''})"


def _run_all(
    runner: Runner,
    pristine: Path,
    work: Path,
    rows: Sequence[Mutation],
    tests: Sequence[str],
    workers: int,
) -> list[Outcome]:
    results: dict[str, Outcome] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            pool.submit(run_mutation, runner, pristine, work, row, tests): row for row in rows
        }
        try:
            for future in concurrent.futures.as_completed(futures):
                outcome = future.result()
                results[outcome.row.name] = outcome
                count = "error" if outcome.run is None else str(len(outcome.run.failed))
                seconds = "" if outcome.run is None else f" ({outcome.run.seconds:.0f} s)"
                print(f"  {outcome.row.name}: {count} failing{seconds}", flush=True)
        except BaseException:
            runner.stop()
            for pending in futures:
                pending.cancel()
            raise
    return [results[row.name] for row in rows]


if __name__ == "__main__":
    sys.exit(main())
