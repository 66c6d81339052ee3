"""The benchmarks' shared results file, cell processes and seed summaries."""

from __future__ import annotations

from pathlib import Path

from benchmarks.paired_stats import gain_text, mean_and_range, paired_gain
from benchmarks.results_file import load_results, record_run, run_cell_process, save_results

CELL_SCRIPT = """
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if args["--cell"] == "crash":
    print("boom", file=sys.stderr)
    sys.exit(3)
with open(args["--record"], "w") as out:
    json.dump({"key": args["--cell"], "threads": int(args["--threads"])}, out)
"""


def test_an_absent_file_is_empty_and_a_saved_one_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "results.json"
    assert load_results(path) == {"runs": [], "invocations": []}
    save_results(path, {"runs": [{"key": "a"}], "b": 1})
    assert load_results(path) == {"runs": [{"key": "a"}], "b": 1}
    assert path.read_text().endswith("}\n")
    assert not path.with_suffix(".tmp").exists()


def test_a_rerun_cell_replaces_its_earlier_record_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    record_run(path, {"key": "a", "error": "exit 1"})
    record_run(path, {"key": "b", "value": 2}, recipe={"lr": 0.1})
    record_run(path, {"key": "a", "value": 1}, recipe={"lr": 0.2})
    results = load_results(path)
    assert results["runs"] == [{"key": "b", "value": 2}, {"key": "a", "value": 1}]
    assert results["recipe"] == {"lr": 0.2}


def test_a_cell_process_returns_its_record_or_its_crash(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(CELL_SCRIPT)
    assert run_cell_process(script, "s1/seed0", 3) == {"key": "s1/seed0", "threads": 3}
    assert run_cell_process(script, "crash", 1) == {"key": "crash", "error": "exit 3: boom"}


def test_seed_summaries_read_as_the_reports_print_them() -> None:
    assert mean_and_range([]) == "-"
    assert mean_and_range([81.25]) == "81.2"
    assert mean_and_range([80.0, 82.0, 84.0]) == "82.0 (80.0 to 84.0)"
    assert gain_text(None) == "-"
    one = paired_gain({0: 81.0}, {0: 80.0})
    assert gain_text(one) == "+1.0 (one seed)"
    assert gain_text(one, digits=2) == "+1.00 (one seed)"
    gain = paired_gain({0: 81.0, 1: 83.0}, {0: 80.0, 1: 80.0})
    # differences 1 and 3: mean 2, sd sqrt(2), t(0.975, 1 dof) = 12.706 -> 2 -/+ 12.706
    assert gain_text(gain) == "+2.0 [-10.7, +14.7]"
    assert gain_text(gain, digits=2, count_seeds=True) == "+2.00 [-10.71, +14.71] (2 seeds)"
