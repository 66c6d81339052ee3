"""The contract's table is the one source of the site <-> coordinator calls: the participant
interface, the remote site, the deployed site's handlers, the dropouts and their stages all follow
it (adding a call is adding a row)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any

import pytest

import clinfl.transport.contract as contract
from clinfl.config import DROP_STAGES, Dropout
from clinfl.errors import SiteUnavailable
from clinfl.federation.messages import RoundSettings
from clinfl.secagg.stages import ROUND_STAGES, TRAIN, Stage, stage_name
from clinfl.simulation.dropouts import DroppingParticipant, parse_dropout
from clinfl.transport.contract import (
    CALLS,
    JOIN,
    ROUND_CALLS,
    TRAIN_ROUND,
    Call,
    CallingParticipant,
    TimeoutClass,
    TrainingParticipant,
    encode_refusal,
)
from coordinator.deploy.remote_sites import RemoteSite, Timeouts
from tests.unit.test_deployed_join import _site

PARTICIPANT_METHODS = {
    name
    for name, member in inspect.getmembers(TrainingParticipant)
    if inspect.isfunction(member) and not name.startswith("_")
}


def test_the_participant_interface_has_one_method_per_round_call_with_the_tables_types() -> None:
    assert {call.name for call in ROUND_CALLS} == PARTICIPANT_METHODS
    for call in ROUND_CALLS:
        method = getattr(TrainingParticipant, call.name)
        hints = typing.get_type_hints(method, vars(contract))
        assert hints.pop("return") == call.reply, call.name
        parameters = list(hints.values())
        if len(parameters) == 1:  # the method takes the call's argument as it is
            assert parameters == [call.argument], call.name
        else:  # the argument is a request holding the method's parameters, in order
            fields = typing.get_type_hints(call.argument)
            assert dataclasses.is_dataclass(call.argument)
            assert list(fields.values()) == parameters, call.name
            assert list(fields) == list(hints), call.name


def test_every_rows_static_types_are_its_wire_types() -> None:
    annotations = typing.get_type_hints(contract)
    rows = {name: value for name, value in vars(contract).items() if isinstance(value, Call)}
    assert set(rows.values()) == set(CALLS.values())
    for name, call in rows.items():
        assert typing.get_args(annotations[name]) == (call.argument, call.reply), name


def test_round_calls_are_the_calls_a_participant_answers_each_at_a_round_stage() -> None:
    for call in CALLS.values():
        assert (call.stage is None) == (call.answer is None), call.name
        assert call.stage is None or call.stage in ROUND_STAGES
    # training and every protocol stage have their call
    assert {call.stage for call in ROUND_CALLS} == set(ROUND_STAGES)
    assert {call.name for call in CALLS.values() if call.ends_round} == {
        "upload_plain",
        "secagg_reveal",
    }


def test_drop_stages_are_the_rounds_stages() -> None:
    stages = ("train", *(s.name.lower().replace("_", "-") for s in Stage), "score")
    assert stages == DROP_STAGES
    assert tuple(stage_name(stage) for stage in ROUND_STAGES) == DROP_STAGES
    assert ROUND_STAGES[0] == TRAIN


def test_calling_participant_turns_each_method_into_its_call() -> None:
    made: list[tuple[Call[Any, Any], object]] = []

    class Recorder(CallingParticipant):
        @property
        def site_id(self) -> str:
            return "site-1"

        def call(self, call: Call[Any, Any], argument: Any) -> Any:
            made.append((call, argument))
            return call.name

    recorder = Recorder()
    for name in sorted(PARTICIPANT_METHODS):
        method = getattr(CallingParticipant, name)
        assert method is not getattr(TrainingParticipant, name), f"{name} is not forwarded"
        assert inspect.signature(method) == inspect.signature(getattr(TrainingParticipant, name))
        arguments = [object()] * (len(inspect.signature(method).parameters) - 1)
        assert getattr(recorder, name)(*arguments) == name
    assert {call for call, _ in made} == set(ROUND_CALLS)
    request = next(argument for call, argument in made if call is TRAIN_ROUND)
    assert isinstance(request, contract.TrainRequest)


def test_the_contract_is_the_participants_one_home() -> None:
    """No other module defines or re-exports the participant interfaces (issue 31)."""
    root = Path(__file__).resolve().parents[2]
    homes = []
    for package in ("clinfl", "site_agent", "coordinator"):
        for path in root.glob(f"{package}/**/*.py"):
            text = path.read_text()
            for name in ("TrainingParticipant", "SecureAggregationParticipant"):
                if f"class {name}(" in text:
                    homes.append((name, path.relative_to(root).as_posix()))
    assert sorted(homes) == [
        ("SecureAggregationParticipant", "clinfl/transport/contract.py"),
        ("TrainingParticipant", "clinfl/transport/contract.py"),
    ]
    for shim in ("clinfl/federation/roles.py", "clinfl/config_file.py", "clinfl/policy.py"):
        assert not (root / shim).exists(), f"{shim} is back: the contract has one home"


class RecordingLink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def node_ids(self) -> set[int]:
        return {7}

    def call(self, node_id: int, call: str, body: bytes, *, timeout: float) -> bytes:
        self.calls.append((call, timeout))
        return encode_refusal(SiteUnavailable("busy", remedy="-"), site_id="site-1")


class OneNode:
    def node_of(self, site_id: str) -> int:
        return 7


def test_remote_site_makes_every_call_with_its_timeout_class() -> None:
    timeouts = Timeouts(join=1.0, train=2.0, stage=3.0, evaluate=4.0)
    assert {timeouts.seconds(kind) for kind in TimeoutClass} == {1.0, 2.0, 3.0, 4.0}
    link = RecordingLink()
    site = RemoteSite("site-1", OneNode(), link, timeouts)  # type: ignore[arg-type]
    for call in CALLS.values():
        with pytest.raises(SiteUnavailable):
            site.call(call, None)
    assert link.calls == [(call.name, timeouts.seconds(call.timeout)) for call in CALLS.values()]
    assert JOIN.timeout is TimeoutClass.JOIN


def test_the_deployed_site_has_a_handler_for_every_call_and_no_other(tmp_path: Path) -> None:
    site = _site(tmp_path)
    assert set(site._handlers) == set(CALLS)


class Answering:
    """A participant that answers every round call with the call's name."""

    site_id = "site-2"

    def __getattr__(self, name: str) -> Any:
        return lambda *_: name


def test_dropouts_follow_the_stages_of_the_table() -> None:
    dropped = DroppingParticipant(Answering(), [parse_dropout("site-2:share")])  # type: ignore[arg-type]
    for call in ROUND_CALLS:
        assert call.stage is not None
        if ROUND_STAGES.index(call.stage) >= ROUND_STAGES.index(Stage.SHARE):
            with pytest.raises(SiteUnavailable, match="dropped out at share"):
                dropped.call(call, None)
        else:
            assert dropped.call(call, contract.TrainRequest({}, _settings(1))) == call.name


def test_a_dropout_in_one_round_follows_the_round_train_round_names() -> None:
    dropped = DroppingParticipant(Answering(), [Dropout("site-2", "train", 2)])  # type: ignore[arg-type]
    assert dropped.train_round({}, _settings(1)) == "train_round"
    with pytest.raises(SiteUnavailable):
        dropped.train_round({}, _settings(2))
    with pytest.raises(SiteUnavailable):
        dropped.upload_plain()  # still round 2


def _settings(round_number: int) -> RoundSettings:
    return RoundSettings(round_number, 1, 8, 1e-3)
