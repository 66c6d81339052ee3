"""Benchmarks import one way: drivers -> reports and shared modules; never a report -> a driver.

A driver is a script (``python benchmarks/<name>.py``: it has a ``__main__`` block); a report
renders a section of docs/benchmarks.md (``benchmarks/report.py`` and all it imports, every
``*_report.py``). Reports and the shared modules read a driver's constants from a module of
their own (``reference_grid.py``, ``results_file.py``), so no report imports a driver, even
lazily inside a function.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SHARED = ("machine", "paired_stats", "reference_grid", "results_file")


def _imports_in(source: str) -> set[str]:
    """The ``benchmarks`` modules ``source`` imports anywhere (function bodies included)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "benchmarks" and len(parts) == 2:
                found.add(parts[1])
            elif node.module == "benchmarks":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "benchmarks" and len(parts) == 2:
                    found.add(parts[1])
    return found


def _benchmark_imports(name: str) -> set[str]:
    return _imports_in((BENCHMARKS / f"{name}.py").read_text())


def _modules() -> list[str]:
    return sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem != "__init__")


def _drivers() -> set[str]:
    return {
        name
        for name in _modules()
        if '__name__ == "__main__"' in (BENCHMARKS / f"{name}.py").read_text()
    }


def _reached_from(roots: set[str]) -> set[str]:
    reached, todo = set(roots), list(roots)
    while todo:
        for imported in _benchmark_imports(todo.pop()) - reached:
            reached.add(imported)
            todo.append(imported)
    return reached


def _reports() -> set[str]:
    return _reached_from({"report", *(n for n in _modules() if n.endswith("_report"))})


def test_the_driver_and_report_sets_are_what_the_layout_says() -> None:
    drivers, reports = _drivers(), _reports()
    assert {"accuracy", "reference", "xray", "privacy_utility", "secagg"} <= drivers
    assert {"report", "plots", "reference_report", "xray_report", "paired_stats"} <= reports
    assert set(SHARED) <= set(_modules())


def test_no_report_imports_a_driver_even_lazily() -> None:
    assert _reports() & _drivers() == set()


def test_shared_modules_import_no_driver_and_no_report() -> None:
    reports = _reports() - set(SHARED)
    for name in SHARED:
        reached = _reached_from({name}) - {name}
        assert reached & (_drivers() | reports) == set(), name


def test_an_import_counts_wherever_it_stands() -> None:
    """The scanner's own check: a lazy import counts (the loop this guards was one)."""
    source = (
        "import os\nfrom benchmarks import machine\n"
        "def f():\n    from benchmarks.reference import LAMBDA_TUNED\n"
        "    import benchmarks.xray\n    from clinfl.config import RunConfig\n"
    )
    assert _imports_in(source) == {"machine", "reference", "xray"}


@pytest.mark.parametrize("name", [*SHARED, "report"])
def test_the_report_side_and_shared_modules_import(name: str) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__name__ == f"benchmarks.{name}"
