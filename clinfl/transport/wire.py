"""Turning clinfl's round messages into bytes and back, with no pickle anywhere.

A message is JSON. Bytes travel as base64 text; arrays and tensors as ``{dtype, shape, data}``
with their raw little-endian bytes in base64. Decoding is driven by the *expected* type (the
dataclass and its field annotations), never by names inside the message, so a peer can only
produce the types the receiver asked for; anything else raises :class:`~clinfl.errors.WireError`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import types
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import numpy as np
import torch

from clinfl.errors import WireError
from clinfl.metrics import MultiLabelMetrics

T = TypeVar("T")

ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
     "uint32", "uint64", "bool"}
)  # fmt: skip


def _array_to_json(array: np.ndarray) -> dict[str, Any]:
    contiguous = np.ascontiguousarray(array)
    little = contiguous.astype(contiguous.dtype.newbyteorder("<"), copy=False)
    return {
        "dtype": str(contiguous.dtype),
        "shape": list(contiguous.shape),
        "data": base64.b64encode(little.tobytes()).decode("ascii"),
    }


def to_json_value(value: Any) -> Any:
    """Return ``value`` as JSON types (see the module docstring).

    Raises:
        TypeError: for a value of a type the wire does not carry (a programming error).
    """
    if isinstance(value, MultiLabelMetrics):
        return value.to_json_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return _array_to_json(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return _array_to_json(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, frozenset):
        return sorted(to_json_value(v) for v in value)
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot encode {type(value).__name__} for the wire")


def encode(value: object) -> bytes:
    """Return ``value`` (a clinfl message, or JSON-like data around them) as bytes.

    Raises:
        TypeError: for a value of a type the wire does not carry (a programming error).
    """
    return json.dumps(to_json_value(value), separators=(",", ":"), allow_nan=True).encode()


def _fail(path: str, expected: str, value: object) -> WireError:
    shown = type(value).__name__
    return WireError(
        f"malformed message: {path or 'the message'} should be {expected}, got {shown}",
        remedy="the peer runs an incompatible or tampered clinfl; check both versions",
    )


def _array_from_json(value: Any, path: str) -> np.ndarray:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise _fail(path, "an array", value)
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if dtype not in ALLOWED_DTYPES:
        raise _fail(path, f"an array of a numeric dtype (not {dtype!r})", value)
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise _fail(path, "an array with a valid shape", value)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _fail(path, "base64 array data", value) from None
    little = np.dtype(dtype).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * little.itemsize:
        raise _fail(path, f"{count} values of {dtype}", value)
    return np.frombuffer(raw, dtype=little).astype(np.dtype(dtype), copy=True).reshape(shape)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_json_value(value: Any, expected: Any, path: str) -> Any:
    """Rebuild a value of type ``expected`` from JSON types; ``path`` names it in errors.

    Raises:
        WireError: if the value does not fit ``expected``.
    """
    origin, args = get_origin(expected), get_args(expected)
    if expected is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            return from_json_value(value, others[0], path)
        raise TypeError(f"ambiguous union {expected} on the wire")
    if origin is Literal:  # one of the listed strings (a purpose, a kind), nothing else
        if not isinstance(value, str) or value not in args:
            raise _fail(path, f"one of {', '.join(map(str, args))}", value)
        return value
    if expected is MultiLabelMetrics:
        try:
            return MultiLabelMetrics.from_json_dict(value)
        except (KeyError, TypeError, ValueError):
            raise _fail(path, "metrics", value) from None
    if isinstance(expected, type) and dataclasses.is_dataclass(expected):
        fields = {f.name for f in dataclasses.fields(expected) if f.init}
        if not isinstance(value, dict) or not set(value) <= fields:
            raise _fail(path, f"a {expected.__name__}", value)
        hints = _hints(expected)
        decoded = {k: from_json_value(v, hints[k], f"{path}.{k}") for k, v in value.items()}
        try:
            return expected(**decoded)
        except (TypeError, ValueError):
            raise _fail(path, f"a complete {expected.__name__}", value) from None
    if expected is torch.Tensor:
        return torch.from_numpy(_array_from_json(value, path))
    if expected is np.ndarray:
        return _array_from_json(value, path)
    if expected is bytes:
        if not isinstance(value, str):
            raise _fail(path, "base64 bytes", value)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(path, "base64 bytes", value) from None
    if origin in (tuple, list, frozenset):
        if not isinstance(value, list):
            raise _fail(path, "a list", value)
        item = args[0] if args else Any
        items = [from_json_value(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        if origin is frozenset:
            return frozenset(items)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"only homogeneous tuples travel, not {expected}")
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(path, "a mapping", value)
        key_type, item = args
        if key_type is not str:
            raise TypeError(f"only str keys travel, not {expected}")
        return {k: from_json_value(v, item, f"{path}[{k!r}]") for k, v in value.items()}
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, "a number", value)
        return float(value)
    if expected in (int, str, bool):
        if type(value) is not expected:
            raise _fail(path, f"a {expected.__name__}", value)
        return value
    if expected is type(None):
        if value is not None:
            raise _fail(path, "null", value)
        return None
    raise TypeError(f"{expected} does not travel on the wire")


def decode(data: bytes, expected: type[T] | Any) -> T:
    """Decode bytes written by :func:`encode` into the ``expected`` type.

    ``expected`` is a clinfl message dataclass or a typing form built from them (``list[X]``,
    ``dict[str, torch.Tensor]``, ``frozenset[str]``...).

    Raises:
        WireError: if the bytes are not JSON or do not fit ``expected``.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise WireError(
            "malformed message: not JSON",
            remedy="the peer runs an incompatible or tampered clinfl; check both versions",
        ) from None
    result: T = from_json_value(document, expected, "")
    return result
