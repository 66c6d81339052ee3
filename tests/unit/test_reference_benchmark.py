"""The reference benchmark's statistics, hyperparameter choices and report."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.paired_stats import paired_gain
from benchmarks.reference import (
    Cell,
    Settings,
    cpus_of,
    long_cells,
    projected_seconds,
    run_config,
    settings_conflict,
    tuning_cells,
    with_tuned_weights,
)
from benchmarks.reference_grid import (
    BASE_METHOD,
    HEAD_CHOICE,
    HEAD_VARIANT,
    PAPER_LAMBDA_REJ,
    tuning_choices,
    validated_defaults,
)
from benchmarks.reference_report import render_reference


def test_paired_gain_known_answer() -> None:
    gain = paired_gain({0: 0.80, 1: 0.82, 2: 0.84}, {0: 0.79, 1: 0.80, 2: 0.81, 7: 0.5})
    assert gain is not None
    assert gain.seeds == (0, 1, 2)  # seed 7 has no pair
    assert gain.mean == pytest.approx(0.02)
    assert gain.sd == pytest.approx(0.01)
    # t(0.975, 2 dof) = 4.302653: half-width 4.302653 * 0.01 / sqrt(3)
    assert gain.ci_high - gain.mean == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5)
    assert gain.verdict.startswith("no difference")  # 3 seeds: t(0.975) is wide


def test_paired_gain_verdicts() -> None:
    loss = paired_gain({0: 0.70, 1: 0.71, 2: 0.69}, {0: 0.80, 1: 0.80, 2: 0.81})
    assert loss is not None and loss.verdict.startswith("loss")
    mixed = paired_gain({0: 0.80, 1: 0.70}, {0: 0.75, 1: 0.75})
    assert mixed is not None and mixed.verdict.startswith("no difference")
    assert paired_gain({0: 0.8}, {1: 0.8}) is None
    single = paired_gain({0: 0.8}, {0: 0.7})
    assert single is not None and single.verdict == "one seed: no interval"


@given(st.lists(st.floats(-1, 1), min_size=2, max_size=8), st.floats(-1, 1))
def test_interval_contains_the_mean_and_shifts_with_it(diffs: list[float], shift: float) -> None:
    base = {i: 0.0 for i in range(len(diffs))}
    gain = paired_gain({i: d for i, d in enumerate(diffs)}, base)
    moved = paired_gain({i: d + shift for i, d in enumerate(diffs)}, base)
    assert gain is not None and moved is not None
    assert gain.ci_low <= gain.mean + 1e-12 and gain.mean <= gain.ci_high + 1e-12
    assert moved.ci_high - moved.ci_low == pytest.approx(gain.ci_high - gain.ci_low, abs=1e-9)
    assert gain.detectable >= gain.ci_high - gain.mean - 1e-12


def _run(stage: str, variant: str, seed: int, val: float, test: float, **extra: Any) -> dict:
    rounds = [
        {"round": r, "macro_auc": test, "val_macro_auc": val, "model_diagnostics": None}
        for r in (1, 2)
    ]
    return {
        "key": f"{stage}/{variant}/{seed}/{extra}",
        "stage": stage,
        "dataset": "digits",
        "setting": "s1",
        "variant": variant,
        "seed": seed,
        "options": extra.pop("options", {}),
        "tuned": extra.pop("tuned", {}),
        "lr": extra.pop("lr", None),
        "width": None,
        "seconds": 10.0,
        "rounds": rounds,
        "best": {
            "round": 2,
            "macro_auc": test,
            "val_macro_auc": val,
            "macro_f1": 0.5,
            "macro_f1_at_thresholds": 0.6,
        },
    }


def test_choices_come_from_validation_never_from_test() -> None:
    runs = [
        # lr 1e-3 has the better *test* AUC; 3e-4 the better validation AUC: 3e-4 is chosen
        _run("tune", "fedavg", 100, val=0.90, test=0.70, lr=3e-4),
        _run("tune", "fedavg", 100, val=0.80, test=0.99, lr=1e-3),
        _run("tune", "fedncalign_paper", 100, val=0.70, test=0.99, lr=1e-3),
        # the paper's loss weights, scored by the run at the chosen rate
        _run("tune", "fedncalign_paper", 100, val=0.85, test=0.99, lr=1e-4),
        _run("tune", "fedncalign_paper", 100, val=0.9, test=0.1, options={"lambda_rej": 0.1}),
        _run("tune", "fedncalign_paper", 100, val=0.8, test=0.9, options={"lambda_rej": 0.01}),
        _run("tune", "fedncalign_paper", 100, val=0.8, test=0.9, options={"lambda_con": 0.1}),
        _run("main", "fedavg", 0, val=0.99, test=0.99, lr=1e-2),  # main runs choose nothing
    ]
    choices = tuning_choices(runs)
    assert choices["fedavg"]["lr"] == 3e-4 and choices["scaffold"]["lr"] == 3e-4
    # lambda_rej 0.1 beats the paper's weight on validation; lambda_con 0.1 does not
    assert choices["fedncalign_paper"] == {"lr": 1e-4, "lambda_rej": 0.1}
    assert choices["fedncalign_ln"]["lambda_rej"] == 0.1  # the LayerNorm variant shares them
    cells = with_tuned_weights(
        [
            Cell("main", "digits", "s1", "fedncalign_paper", 0),
            Cell("main", "nih1000", "s1", "fedncalign_paper", 0),
            Cell("tune", "digits", "s1", "fedncalign_paper", 100, lr=1e-3),
        ],
        choices,
    )
    digits, nih, tune_cell = (run_config(cell, Settings(), choices) for cell in cells)
    assert digits.federation.lr == 1e-4 and digits.method.lambda_rej == 0.1
    assert "{lambda_rej=0.1}" in cells[0].key  # a rerun with other weights is another cell
    # tuned on digits only: NIH1000 keeps the paper's X-ray weight, written out
    assert nih.method.lambda_rej == PAPER_LAMBDA_REJ["nih1000"] and "{" not in cells[1].key
    assert digits.method.query_scaling == "none" and digits.federation.patience == 4
    # the tuning stage starts from the paper's weights, whatever the product's presets say
    assert tune_cell.federation.lr == 1e-3
    assert tune_cell.method.lambda_rej == PAPER_LAMBDA_REJ["digits"]
    assert tune_cell.method.lambda_con == BASE_METHOD["lambda_con"]
    assert tune_cell.method.head_bias == "prior"


def test_fedavgs_head_is_chosen_on_validation_never_on_test() -> None:
    runs = [
        _run("tune", "fedavg", 100, val=0.80, test=0.99, lr=1e-3),
        _run("tune", "fedavg", 100, val=0.70, test=0.99, lr=3e-4),
        _run("tune", "fedavg", 100, val=0.90, test=0.10, lr=1e-2),
    ]
    assert HEAD_CHOICE not in tuning_choices(runs)  # no head grid: no head choice
    zero = _run("tune", HEAD_VARIANT, 100, val=0.85, test=0.10)
    # FedAvg chose lr 1e-2 (val 0.90); at that rate the prior head (0.90) beats zero (0.85)
    assert tuning_choices([*runs, zero])[HEAD_CHOICE] == {"head_bias": "prior"}
    better = _run("tune", HEAD_VARIANT, 100, val=0.91, test=0.10)
    choices = tuning_choices([*runs, better])
    assert choices[HEAD_CHOICE] == {"head_bias": "zero"}
    (head,) = tuning_cells((100,), ["head"])
    config = run_config(head, Settings(lr=1e-3), choices)
    assert config.method.head_bias == "zero" and config.federation.lr == 1e-2  # FedAvg's rate
    text = "\n".join(render_reference({"runs": [*runs, better], "settings": Settings().__dict__}))
    assert "| zero (chosen) | 91.00 ± 0.00 |" in text and "| prior | 90.00 ± 0.00 |" in text


def test_validated_defaults_read_the_choices_and_the_trained_settings() -> None:
    runs = [
        _run("tune", "fedavg", 100, val=0.9, test=0.5, lr=3e-4),
        _run("tune", "fedncalign_paper", 100, val=0.9, test=0.5, lr=3e-4),
        _run("tune", "fedncalign_paper", 100, val=0.95, test=0.1, options={"lambda_con": 0.3}),
        _run("tune", "fedcurv", 100, val=0.95, test=0.1, options={"fedcurv_lambda": 10.0}),
        {
            **_run("main", "fedavg", 0, val=0.9, test=0.9),
            "config": {"data": {"image_size": 24}, "method": {"width": 8}},
        },
    ]
    chosen = validated_defaults({"runs": runs})
    assert chosen == {
        "federation.lr": 3e-4,
        "method.lambda_rej": PAPER_LAMBDA_REJ["digits"],  # not tuned: the paper's
        "method.lambda_con": 0.3,
        "method.prox_mu": BASE_METHOD["prox_mu"],
        "method.fedcurv_lambda": 10.0,
        "data.image_size": 24,
        "method.width": 8,
    }
    assert validated_defaults({"runs": runs[-1:]}) == {}  # no tuning stage: nothing chosen


def test_baseline_strengths_are_tuned_on_validation_at_fedavgs_rate() -> None:
    """FedProx's mu and FedCurv's lambda get the same tuning budget as FedNCAlign-ML's weights."""
    runs = [
        _run("tune", "fedavg", 100, val=0.9, test=0.5, lr=3e-4),
        _run("tune", "fedavg", 100, val=0.8, test=0.9, lr=1e-3),
        # mu 0.1 is best on validation (worst on test); the default 0.01 is not
        _run("tune", "fedprox", 100, val=0.95, test=0.1, options={"prox_mu": 0.1}),
        _run("tune", "fedprox", 100, val=0.90, test=0.9, options={"prox_mu": 0.01}),
        # FedCurv's default is best on validation: nothing changes for it
        _run("tune", "fedcurv", 100, val=0.95, test=0.1, options={"fedcurv_lambda": 1e5}),
        _run("tune", "fedcurv", 100, val=0.90, test=0.9, options={"fedcurv_lambda": 1e3}),
    ]
    choices = tuning_choices(runs)
    assert choices["fedprox"] == {"lr": 3e-4, "prox_mu": 0.1}
    assert choices["fedcurv"] == {"lr": 3e-4}
    main, curv = with_tuned_weights(
        [Cell("main", "digits", "s2", "fedprox", 0), Cell("main", "digits", "s2", "fedcurv", 0)],
        choices,
    )
    assert "fedprox{prox_mu=0.1}" in main.key and "{" not in curv.key
    assert run_config(main, Settings(), choices).method.prox_mu == 0.1
    tune = [c for c in tuning_cells((100,), ["baseline"]) if c.variant == "fedprox"]
    assert sorted(dict(c.options)["prox_mu"] for c in tune) == [0.001, 0.01, 0.1]
    config = run_config(tune[0], Settings(lr=1e-3), choices)
    assert config.federation.lr == 3e-4 and config.method.prox_mu == 0.001
    text = "\n".join(render_reference({"runs": runs, "settings": Settings().__dict__}))
    assert "| 0.1 (chosen) |" in text and "| 0.01 (default) |" in text
    assert "| 100000 (default) (chosen) |" in text


def test_report_states_each_gain_and_its_interval() -> None:
    runs = [_run("main", "fedavg", s, 0.8, 0.80 + 0.001 * s) for s in range(5)]
    runs += [_run("main", "fedncalign_ln", s, 0.8, 0.83 + 0.002 * s) for s in range(5)]
    text = "\n".join(render_reference({"runs": runs, "settings": Settings().__dict__}))
    assert "FedNCAlign-ML (LADM + LayerNorm, clinfl) − FedAvg (prior bias)" in text
    assert "+3.00, +3.10, +3.20, +3.30, +3.40" in text
    assert "gain (interval above 0)" in text
    assert render_reference({"runs": []}) == []


def test_ablations_pair_with_the_full_model_of_the_same_loss_weights() -> None:
    """The full model of the ablation table is the tuned main run, not the paper-weight one."""
    weights = {"lambda_rej": 0.1}

    def cell(stage: str, variant: str, seed: int, test: float, **extra: Any) -> dict:
        return {**_run(stage, variant, seed, 0.9, test, **extra), "setting": "s2"}

    runs = [cell("main", "fedavg", s, 0.80) for s in range(5)]
    runs += [cell("main", "fedncalign_paper", s, 0.70) for s in range(5)]  # paper weights
    runs += [cell("main", "fedncalign_paper", s, 0.90, tuned=weights) for s in range(5)]
    runs += [
        cell("ablation", "fedncalign_paper", s, 0.85, tuned=weights, options={"ladm": False})
        for s in range(5)
    ]
    text = "\n".join(render_reference({"runs": runs, "settings": Settings().__dict__}))
    ablation = text[text.index("### Ablations") :]
    assert "FedNCAlign-ML (paper LADM, loss weights tuned) as the full model" in ablation
    assert "| ladm=False | 5 | 85.00 ± 0.00 | -5.00 [-5.00, -5.00] | loss" in ablation
    assert "tuned − paper loss weights | +20.00" in text  # both kinds of run are reported


def test_shipped_example_configs_load_and_validate() -> None:
    from pathlib import Path

    from clinfl.algorithms import available_algorithms
    from clinfl.config import validate_run_config
    from clinfl.config.file import load_run_config

    folder = Path(__file__).resolve().parents[2] / "examples" / "configs"
    loaded = {
        path.stem: validate_run_config(load_run_config(path), known_methods=available_algorithms())
        for path in sorted(folder.glob("*.toml"))
    }
    assert loaded["paper"].federation.lr == 1e-4 and loaded["paper"].method.width == 64
    assert loaded["paper"].method.query_scaling == "none"
    reference, settings = loaded["reference-cpu"], Settings()
    assert reference.method.width == settings.width
    assert reference.federation.rounds == settings.max_rounds
    assert reference.federation.patience == settings.patience
    assert reference.federation.lr == settings.lr
    assert reference.method.backbone == settings.backbone


def test_long_stage_gives_fedavg_a_longer_cap_and_is_reported_against_the_main_runs() -> None:
    (cell,) = long_cells((0,), 30)
    assert cell.key.endswith("/rounds=60/0") and cell.variant == "fedavg"
    assert run_config(cell, Settings(max_rounds=30)).federation.rounds == 60
    runs = [
        {**_run("main", "fedncalign_paper", s, 0.9, 0.90 + 0.01 * s), "setting": "s2"}
        for s in range(3)
    ]
    runs += [
        {**_run("long", "fedavg", s, 0.9, 0.88), "setting": "s2", "max_rounds": 60}
        for s in range(3)
    ]
    text = "\n".join(render_reference({"runs": runs, "settings": Settings().__dict__}))
    assert "### FedAvg with 60 rounds" in text
    assert "FedNCAlign-ML (paper LADM) − FedAvg (cap 60) | +2.00, +3.00, +4.00 | +3.00" in text


def test_width_study_compares_runs_with_the_same_loss_weights() -> None:
    """A narrow-width run with tuned weights is set against the tuned main run, not the paper's."""
    tuned = {"lambda_rej": 0.1}
    runs = [
        _run("main", "fedncalign_paper", 0, 0.9, 0.71),
        _run("main", "fedncalign_paper", 0, 0.9, 0.72, tuned=tuned),
        {**_run("width", "fedncalign_paper", 0, 0.9, 0.73, tuned=tuned), "width": 32},
    ]
    text = "\n".join(render_reference({"runs": runs, "settings": Settings(width=16).__dict__}))
    table = text[text.index("What the narrow backbone costs") :]
    assert "| 16 | FedNCAlign-ML (paper LADM, loss weights tuned) | 1 | 72.00 ± 0.00 |" in table
    assert "| 32 | FedNCAlign-ML (paper LADM, loss weights tuned) | 1 | 73.00 ± 0.00 |" in table
    assert "71.00" not in table


def test_the_machine_names_every_cpu_its_runs_ran_on() -> None:
    runs = [{"cpu": "A"}, {"cpu": "B"}, {"cpu": "A"}, {"cpu": "C", "error": "boom"}]
    assert cpus_of(runs) == "A (2 runs), B (1 runs)"
    assert cpus_of([{"cpu": "A"}]) == "A"


def test_resuming_a_results_file_made_with_other_settings_is_refused() -> None:
    settings = Settings()
    made = {"runs": [{"key": "main/digits/s1/fedavg/0"}], "settings": settings.__dict__}
    assert settings_conflict(made, settings) is None
    assert settings_conflict({"runs": [], "settings": {"width": 16}}, settings) is None
    wider = {**made, "settings": {**settings.__dict__, "width": 2 * settings.width}}
    conflict = settings_conflict(wider, settings)
    assert conflict is not None and f"width {2 * settings.width} (now {settings.width})" in conflict
    small = Settings(backbone="small")
    conflict = settings_conflict(made, small)
    assert conflict is not None and "backbone compact (now small)" in conflict


def test_the_backbone_setting_reaches_every_cell() -> None:
    cell = Cell("main", "digits", "s1", "fedavg", 0)
    assert run_config(cell, Settings()).method.backbone == "compact"
    assert run_config(cell, Settings(backbone="small")).method.backbone == "small"


def test_the_report_gives_the_wall_time_of_every_invocation() -> None:
    from benchmarks.reference_report import wall_time_line

    assert wall_time_line({"runs": []}) == ""
    invocations = [
        {"started": "2026-12-06T19:00:00Z", "seconds": 5400.0, "cells": 150, "stages": "all"},
        {"started": "2026-12-07T09:00:00Z", "seconds": 1800.0, "cells": 96, "stages": "all"},
    ]
    line = wall_time_line({"invocations": invocations})
    assert "2.00 h for 246 of these runs in 2 invocations" in line
    assert "2026-12-06T19:00:00Z, 1.50 h, 150 cells" in line


def test_the_projection_counts_each_cells_rounds_at_the_fastest_measured_rate() -> None:
    fast, slow = (_run("main", "fedavg", s, 0.9, 0.8) for s in (0, 1))
    fast["rounds"] = [{**r, "seconds": 2.0} for r in fast["rounds"]]  # 2 rounds of 2 s
    slow["rounds"] = [{**r, "seconds": 5.0} for r in slow["rounds"] * 2]  # 4 rounds of 5 s
    fast["seconds"], slow["seconds"] = 4.0 + 3.0, 20.0 + 1.0  # set-up: 3 s and 1 s
    cells = [Cell("main", "digits", "s1", "fedavg", s) for s in (0, 1, 2)]
    keyed = {cells[0].key: fast, cells[1].key: slow}
    runs = [{**run, "key": key} for key, run in keyed.items()]
    seconds, missing = projected_seconds(cells, runs)
    # 2 rounds and 4 rounds at 2 s a round, each with the fastest set-up (1 s)
    assert seconds == pytest.approx((2 * 2.0 + 1.0) + (4 * 2.0 + 1.0))
    assert missing == [cells[2]]


def test_choices_from_another_results_file_reach_the_cells_run(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--choices-from`` runs other settings with the preset's choices, and refuses a tune."""
    import sys

    import benchmarks.reference as reference
    import benchmarks.report as report
    from benchmarks.accuracy import save_results

    source = tmp_path / "reference.json"
    tune = [
        _run("tune", "fedavg", 100, val=0.9, test=0.5, lr=3e-4),
        _run("tune", "fedavg", 100, val=0.8, test=0.9, lr=1e-3),
        _run("tune", "fedncalign_paper", 100, val=0.8, test=0.9, lr=1e-3),
        _run("tune", "fedncalign_paper", 100, val=0.9, test=0.1, options={"lambda_rej": 0.1}),
    ]
    save_results(source, {"runs": tune})
    ran: list[tuple[list[Cell], dict[str, Any]]] = []

    def fake_run_cells(todo: list[Cell], settings: Settings, args: Any, **kw: Any) -> None:
        if todo:  # the (empty) tune stage passes no choices
            ran.append((todo, kw["choices"]))

    monkeypatch.setattr(reference, "run_cells", fake_run_cells)
    monkeypatch.setattr(report, "write_docs", lambda: None)
    target = tmp_path / "patience.json"
    argv = ["reference.py", "--stage", "main", "--datasets", "digits", "--settings", "s2"]
    argv += ["--variants", "fedavg,fedncalign_paper", "--seeds", "0", "--patience", "10"]
    argv += ["--results", str(target), "--choices-from", str(source)]
    monkeypatch.setattr(sys, "argv", argv)
    reference.main()
    cells = [cell for todo, _ in ran for cell in todo]
    assert sorted(cell.key for cell in cells) == [
        "main/digits/s2/fedavg/0",
        "main/digits/s2/fedncalign_paper{lambda_rej=0.1}/0",
    ]
    assert all(choices["fedavg"]["lr"] == 3e-4 for _, choices in ran)
    assert reference.load_results(target)["settings"]["patience"] == 10
    monkeypatch.setattr(sys, "argv", [*argv[:2], "tune,main", *argv[3:]])
    with pytest.raises(SystemExit):
        reference.main()
    monkeypatch.setattr(sys, "argv", [*argv[:-1], str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit):
        reference.main()


def test_the_headline_pairs_the_equal_budget_runs_and_names_the_better_head() -> None:
    def cell(variant: str, seed: int, val: float, test: float, ran: int) -> dict:
        run = {**_run("main", variant, seed, val, test), "setting": "s2"}
        return {**run, "rounds": [{"round": r + 1} for r in range(ran)]}

    equal = {
        "settings": {"max_rounds": 60, "patience": 10},
        "runs": [cell("fedavg", s, 0.90, 0.90, 60) for s in range(3)]
        + [cell("fedavg_zero_bias", s, 0.95, 0.92, 40) for s in range(3)]
        + [cell("fedncalign_paper", s, 0.95, 0.93 + 0.01 * s, 60) for s in range(3)],
    }
    preset = [{**_run("main", "fedavg", s, 0.8, 0.85), "setting": "s2"} for s in range(3)]
    text = "\n".join(
        render_reference({"runs": preset, "settings": Settings().__dict__}, equal_budget=equal)
    )
    headline = text[text.index("### Headline") : text.index("### Digits")]
    # zero bias has the higher validation score: it is the better head, whatever test says
    assert "FedAvg (zero bias) (the better head) | +1.00, +2.00, +3.00 | +2.00" in headline
    assert "| FedAvg (prior bias) | 3 | 90.00 ± 0.00 |" in headline
    assert "+5.00 [+5.00, +5.00] |" in headline  # prior-bias FedAvg: patience 10 minus 4
    assert "6 of 9 runs reached the cap of 60" in headline
    # the preset's table says what stopped its runs
    assert "stopped by patience before the cap" in text and "converged" not in text


def test_a_longer_cap_that_no_run_reached_is_not_said_to_rule_out_speed() -> None:
    runs = [{**_run("main", "fedncalign_paper", s, 0.9, 0.95), "setting": "s2"} for s in range(2)]
    runs += [
        {**_run("long", "fedavg", s, 0.9, 0.88), "setting": "s2", "max_rounds": 60}
        for s in range(2)
    ]  # each ran 2 rounds, far from the cap
    text = "\n".join(render_reference({"runs": runs, "settings": Settings().__dict__}))
    assert "No run reached the cap of 60" in text
    assert "cannot tell speed of convergence from accuracy" in text
    assert "not speed of convergence alone" not in text
