"""The wire codec: every round message survives the trip exactly; nothing else gets through."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clinfl.errors import (
    BudgetExhausted,
    PolicyViolation,
    ProtocolViolation,
    SiteUnavailable,
    WireError,
)
from clinfl.federation.messages import EvaluationReport, RoundSettings, TrainingReport
from clinfl.metrics import MultiLabelMetrics
from clinfl.secagg.hazmat.shamir import Share
from clinfl.secagg.messages import (
    Advertisement,
    EncryptedShare,
    GraphReveal,
    MaskedInput,
    RevealedShares,
    SurvivorSignature,
    UnmaskRequest,
)
from clinfl.secagg.settings import RoundParameters
from clinfl.secagg.transcript import RoundBinding
from clinfl.transport.contract import (
    CALLS,
    JoinReply,
    TrainRequest,
    check_call,
    decode_reply,
    encode_refusal,
    encode_reply,
    read_refusal,
)
from clinfl.transport.wire import decode, encode

StateDict = dict[str, torch.Tensor]


def test_every_secure_aggregation_message_round_trips() -> None:
    params = RoundParameters("run", 7, ("a", "b", "c"), 2, 2, 48, 0.5, 1024.0, 100, 12, 64.0)
    binding = RoundBinding(b"\x05" * 32, "run", 7, b"\x06" * 32, b"\x07" * 32, b"\x08" * 32)
    advert = Advertisement("a", binding, b"\x01" * 32, b"\x02" * 32, b"\x04" * 32, b"\x03" * 64)
    reveal = GraphReveal("a", 7, b"\x08" * 32)
    share = EncryptedShare("a", "b", 7, b"sealed\x00\xff")
    request = UnmaskRequest(
        7,
        frozenset({"a", "b"}),
        frozenset({"c"}),
        frozenset({"a"}),
        (SurvivorSignature("a", b"s"),),
    )
    revealed = RevealedShares("a", 7, {"b": Share(2, 2**250 + 3)}, {"c": Share(3, 5)})
    for value, kind in [
        (params, RoundParameters),
        (advert, Advertisement),
        ((advert, advert), tuple[Advertisement, ...]),
        (reveal, GraphReveal),
        ((reveal,), tuple[GraphReveal, ...]),
        ([share], list[EncryptedShare]),
        (request, UnmaskRequest),
        (revealed, RevealedShares),
        (frozenset({"a", "b"}), frozenset[str]),
    ]:
        assert decode(encode(value), kind) == value


def test_arrays_keep_dtype_shape_and_every_bit() -> None:
    vector = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    masked = decode(encode(MaskedInput("a", 1, vector)), MaskedInput)
    assert masked.vector.dtype == np.uint64
    assert np.array_equal(masked.vector, vector)
    state = {"w": torch.randn(3, 5), "n": torch.arange(4, dtype=torch.int64)}
    request = decode(encode(TrainRequest(state, RoundSettings(1, 1, 32, 1e-3))), TrainRequest)
    for name, tensor in state.items():
        assert request.global_state[name].dtype == tensor.dtype
        assert torch.equal(request.global_state[name], tensor)


def test_metrics_with_nan_and_missing_classes_round_trip() -> None:
    metrics = MultiLabelMetrics(0.5, float("nan"), 0.25, 0.0, (0.5, None))
    report = decode(encode(EvaluationReport(metrics, metrics)), EvaluationReport)
    assert report.validation.per_class_auc == (0.5, None)
    assert np.isnan(report.test.micro_auc)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.lists(st.floats(width=32, allow_nan=True), min_size=0, max_size=20),
        max_size=5,
    )
)
def test_any_float_state_round_trips_bit_for_bit(values: dict[str, list[float]]) -> None:
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}
    back = decode(encode(state), StateDict)
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert back[name].numpy().tobytes() == tensor.numpy().tobytes()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json", TrainingReport),
        (b'{"site_id": 1, "mean_loss": 0.1, "steps": 1}', TrainingReport),
        (b'{"site_id": "a", "mean_loss": "x", "steps": 1}', TrainingReport),
        (b'{"site_id": "a", "steps": 1}', TrainingReport),
        (b'{"site_id": "a", "mean_loss": 1, "steps": 1, "extra": 1}', TrainingReport),
        (b'{"site_id": "a", "mean_loss": 1, "steps": true}', TrainingReport),
        (b'{"site_id": "a", "round_id": 1, "vector": [1, 2]}', MaskedInput),
        (
            b'{"site_id": "a", "round_id": 1, "vector": {"dtype": "object", "shape": [1], '
            b'"data": "AA=="}}',
            MaskedInput,
        ),
        (
            b'{"site_id": "a", "round_id": 1, "vector": {"dtype": "uint64", "shape": [2], '
            b'"data": "AA=="}}',
            MaskedInput,
        ),
        (b'{"sender": "a", "receiver": "b", "round_id": 1, "sealed": "***"}', EncryptedShare),
        (b'{"w": [1.0]}', StateDict),
        (b"[1, 2]", frozenset[str]),
    ],
)
def test_malformed_messages_are_refused_with_a_wire_error(payload: bytes, expected: object) -> None:
    with pytest.raises(WireError):
        decode(payload, expected)


def test_a_wire_error_is_a_protocol_violation() -> None:
    assert issubclass(WireError, ProtocolViolation)


@pytest.mark.parametrize(
    "error",
    [
        BudgetExhausted("budget spent", remedy="wait"),
        PolicyViolation("too few sites", remedy="more"),
        ProtocolViolation("bad list", remedy="stop"),
        SiteUnavailable("gone", remedy="restart"),
    ],
)
def test_a_refusal_comes_back_as_the_same_error(error: Exception) -> None:
    data = encode_refusal(error, site_id="site-2")  # type: ignore[arg-type]
    with pytest.raises(type(error)) as raised:
        decode_reply(data, TrainingReport)
    assert raised.value.message == error.message  # type: ignore[attr-defined]
    refusal = read_refusal(data)
    assert refusal is not None and refusal.site_id == "site-2"


def test_a_reply_decodes_only_to_its_call_type() -> None:
    data = encode_reply(JoinReply("site-1", "0.1.0"))
    assert read_refusal(data) is None
    assert decode_reply(data, JoinReply) == JoinReply("site-1", "0.1.0")
    with pytest.raises(WireError):
        decode_reply(data, TrainingReport)
    with pytest.raises(WireError):
        decode_reply(json.dumps({"ok": 1, "other": 2}).encode(), int)


def test_unknown_calls_are_refused_and_every_call_has_types() -> None:
    with pytest.raises(WireError):
        check_call("__import__")
    assert all(len(check_call(name)) == 2 for name in CALLS)
