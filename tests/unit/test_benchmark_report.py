from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from benchmarks.accuracy import PRESETS, Cell, cells, choose_preset, run_cell
from benchmarks.fedcurv_lambda import choose
from benchmarks.plots import draw_all
from benchmarks.report import render_report
from benchmarks.run_all import plan


def _run(
    method: str, seed: int, macro_auc: float, setting: str = "s1", ablation: str | None = None
) -> dict[str, object]:
    best = {"macro_auc": macro_auc, "micro_auc": 0.5, "macro_f1": 0.25, "micro_f1": 0.5, "round": 3}
    config = {
        "federation": {
            "sites": 5,
            "rounds": 3,
            "local_epochs": 1,
            "batch_size": 32,
            "lr": 0.001,
            "weight_decay": 0.01,
        },
        "data": {"alpha": 0.5, "rho": 0.5, "image_size": 16},
        "method": {"backbone": "auto", "norm": "group", "lambda_rej": 1.0, "lambda_con": 1.0},
    }
    rounds = [
        {"round": r, "macro_auc": macro_auc - 0.1 * (3 - r), "macro_f1": 0.2} for r in (1, 2, 3)
    ]
    partition = {
        "class_names": ["0", "1"],
        "site_by_class_counts": [[3, 0], [0, 4]],
        "dropped": 7,
    }
    return {
        "key": f"digits/{setting}/{ablation or method}/{seed}",
        "dataset": "digits",
        "setting": "none" if method == "centralized" else setting,
        "method": method,
        "ablation": ablation,
        "seed": seed,
        "best": best,
        "config": config,
        "data": "digits",
        "partition": partition,
        "rounds": rounds,
    }


RESULTS = {
    "machine": {"cpu": "TestCPU", "cores": 2, "torch": "x", "torch_threads": 1, "cuda": False},
    "preset": "quick",
    "workers": 2,
    "runs": [
        _run("centralized", 0, 0.95),
        _run("fedavg", 0, 0.80),
        _run("fedavg", 1, 0.90),
        _run("fedncalign", 0, 0.86),
        _run("fedncalign", 1, 0.92),
        _run("scaffold", 0, 0.70, setting="s2"),
        _run("fedncalign", 0, 0.60, ablation="no_rej"),
        {
            "key": "digits/s2/spherefed/0",
            "dataset": "digits",
            "setting": "s2",
            "method": "spherefed",
            "seed": 0,
            "error": "PartitionError: site-3 got nothing",
        },
    ],
    "throughput": [
        {
            "dataset": "digits",
            "method": "fedavg",
            "image_size": 16,
            "images_per_second": 50.0,
            "median_step_seconds": 0.64,
        }
    ],
}


def test_report_tables_means_gains_ablations_and_failures_come_from_the_runs() -> None:
    text = render_report(RESULTS)
    assert "TestCPU" in text
    assert "| FedAvg | 2 | 85.00 ± 7.07 |" in text
    assert "| FedNCAlign-ML | 2 | 89.00 ± 4.24 |" in text
    assert "| SCAFFOLD | 1 | 70.00 ± 0.00 |" in text
    assert "| macro_auc | +4.00 | +6.00, +2.00 | +5.26 |" in text  # ML-CIFAR-10 setting 1
    assert "The paper, ML-DermaMNIST, setting 2" in text
    # the ablation table compares against the full method on the ablation's seeds only
    assert "| FedNCAlign-ML (all parts) | 1 | 86.00 ± 0.00 |" in text
    assert "| no L_rej | 1 | 60.00 ± 0.00 |" in text
    assert "digits/s2/spherefed/0: PartitionError" in text
    assert "| digits | FedAvg | 16 | 50.0 | 640 |" in text


def test_figures_are_drawn_and_linked(tmp_path: Path) -> None:
    privacy = {
        "delta": 1e-5,
        "accuracy": [
            {
                "dataset": "digits",
                "method": "fedavg",
                "budget": 3.0,
                "noise_multiplier": 1.5,
                "rounds": 3,
                "macro_auc": 0.6,
                "macro_f1": 0.1,
                "selected_round": 3,
                "seconds": 60.0,
                "sites": [
                    {
                        "site": "site-1",
                        "clinfl_epsilon": 2.7,
                        "opacus_epsilon": 2.7,
                        "epsilon_by_round": [[1, 1.0], [2, 1.9], [3, 2.7]],
                    }
                ],
            }
        ],
    }
    plots = draw_all(tmp_path / "figures", accuracy=RESULTS, privacy=privacy, secagg={})
    assert set(plots) == {"curves-digits", "partition-digits", "epsilon"}
    for relative in plots.values():
        assert (tmp_path / relative).stat().st_size > 1000
    text = render_report(RESULTS, privacy=privacy, plots=plots)
    assert "](figures/curves-digits.png)" in text and "](figures/epsilon-rounds.png)" in text


def test_quick_preset_covers_every_table_cell() -> None:
    quick = cells(PRESETS["quick"], ["digits", "nih1000"])
    methods = {c.method for c in quick if not c.ablation}
    assert methods == {
        "centralized",
        "fedavg",
        "fedprox",
        "scaffold",
        "fedcurv",
        "spherefed",
        "fedncalign",
    }
    for dataset in ("digits", "nih1000"):
        for setting in ("s1", "s2"):
            for method in methods - {"centralized"}:
                seeds = {
                    c.seed
                    for c in quick
                    if (c.dataset, c.setting, c.method) == (dataset, setting, method)
                    and not c.ablation
                }
                assert seeds == {0, 1, 2}
    ablations = {c.ablation for c in quick if c.ablation}
    assert ablations == {"no_etf", "no_ladm", "learnable_queries", "no_rej", "no_con"}
    assert len({c.key for c in quick}) == len(quick)


def test_runs_from_an_older_results_format_are_left_out() -> None:
    old = {key: value for key, value in _run("fedavg", 0, 0.5).items() if key != "setting"}
    text = render_report({**RESULTS, "runs": [*RESULTS["runs"], old]})  # type: ignore[list-item]
    assert "| FedAvg | 2 | 85.00 ± 7.07 |" in text


@pytest.mark.parametrize(
    ("accelerator", "cuda", "runs_it"),
    [("auto", True, True), ("auto", False, False), ("off", True, False), ("on", False, True)],
)
def test_the_bench_command_adds_the_accelerator_preset_where_cuda_is(
    accelerator: str, cuda: bool, runs_it: bool
) -> None:
    steps = plan("quick", ["secagg.py", "accuracy.py"], accelerator=accelerator, cuda=cuda)
    assert steps[:2] == [["secagg.py", "--quick"], ["accuracy.py", "--quick"]]
    assert (["accuracy.py", "--accelerator"] in steps) is runs_it


def test_without_cuda_the_accelerator_preset_refuses_and_the_report_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    arguments = argparse.Namespace(accelerator=True, full=False, device=None)
    with pytest.raises(SystemExit, match="torch sees 0 CUDA device"):
        choose_preset(arguments)
    assert choose_preset(argparse.Namespace(accelerator=False, full=False, device=None)).device == (
        "cpu"
    )
    assert "Not run: the machine that generated this report had no CUDA device" in render_report(
        RESULTS
    )


def test_an_accelerator_cell_runs_on_the_device_it_names_and_the_report_names_it() -> None:
    """A real (tiny) cell of the accelerator preset, forced onto the CPU: it runs at the preset's
    larger image size on the named device, and its section is rendered from its own numbers."""
    preset = dataclasses.replace(
        choose_preset(argparse.Namespace(accelerator=True, full=False, device="cpu")),
        rounds=1,
        digits={"image_size": 32, "max_samples": 60, "composites_per_pair": 1},
    )
    assert preset.name == "accelerator" and preset.device == "cpu"
    threads = torch.get_num_threads()
    try:  # run_cell sets the (worker) process's thread count
        record = run_cell(Cell("digits", "s1", "fedavg", 0), preset, threads=threads)
    finally:
        torch.set_num_threads(threads)
    assert "error" not in record, record.get("error")
    assert record["config"]["federation"]["device"] == "cpu"
    assert record["config"]["data"]["image_size"] == 32
    results = {"runs": [record], "device": "cpu", "preset": "accelerator", "workers": 1}
    text = render_report(RESULTS, accelerator=results)
    assert "## Accuracy on an accelerator: cpu" in text
    assert "Not run" not in text
    expected = f"{100 * record['best']['macro_auc']:.2f} ± 0.00"
    assert f"| FedAvg | 1 | {expected} |" in text


def test_fedcurv_lambda_is_chosen_on_validation_never_on_test() -> None:
    def run(value: float, seed: int, val: float, test: float) -> dict[str, float]:
        return {"lambda": value, "seed": seed, "val_macro_auc": val, "test_macro_auc": test}

    runs = [
        run(10.0, 0, 0.70, 0.60),
        run(10.0, 1, 0.74, 0.62),
        run(1000.0, 0, 0.71, 0.90),  # best on test, worse on validation (mean 0.70)
        run(1000.0, 1, 0.69, 0.91),
    ]
    assert choose(runs) == 10.0
    assert choose([run(1.0, 0, 0.7, 0.1), run(5.0, 0, 0.7, 0.9)]) == 1.0  # a tie: the smaller
    text = render_report(RESULTS, fedcurv_lambda={"runs": runs, "chosen": choose(runs)})
    assert "| 10 | 72.00 ± 2.83 | 61.00 ± 1.41 | yes |" in text
    assert "| 1000 | 70.00 ± 1.41 | 90.50 ± 0.71 |  |" in text


def test_the_report_says_how_long_the_bench_command_took_and_how_each_script_ended() -> None:
    record = {
        "preset": "quick",
        "seconds": 1770.0,
        "scripts": [
            {"script": "secagg.py --quick", "exit_code": 0, "seconds": 108.0},
            {"script": "accuracy.py --quick", "exit_code": 1, "seconds": 1346.0},
        ],
    }
    text = render_report(RESULTS, run_all=record)
    assert "The last `run_all.py --quick` took 29.5 min in all:" in text
    assert "`secagg.py --quick` 1.8 min (exit 0), `accuracy.py --quick` 22.4 min (exit 1)." in text
