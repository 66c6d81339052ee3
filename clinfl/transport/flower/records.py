"""How a call and its reply ride in a Flower message: one ``ConfigRecord`` named ``clinfl``.

A call carries its name and its body (:mod:`clinfl.transport.wire` bytes); a reply carries only
its body. Both ends read nothing else from the message's content.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

RECORD = "clinfl"


def call_content(call: str, body: bytes) -> RecordDict:
    """Return the content of a message that makes ``call`` with ``body``."""
    return RecordDict({RECORD: ConfigRecord({"call": call, "body": body})})


def read_call(content: RecordDict | None) -> tuple[str, bytes]:
    """Return the call name and body a message's content carries ('' and b'' if it has none)."""
    record = content.config_records.get(RECORD) if content is not None else None
    if record is None:
        return "", b""
    call, body = record.get("call"), record.get("body")
    return (call if isinstance(call, str) else ""), (body if isinstance(body, bytes) else b"")


def reply_content(body: bytes) -> RecordDict:
    """Return the content of a reply whose body is ``body``."""
    return RecordDict({RECORD: ConfigRecord({"body": body})})


def read_reply(content: RecordDict) -> bytes | None:
    """Return the body a reply's content carries, or None if it carries none."""
    record = content.config_records.get(RECORD)
    body = record.get("body") if record is not None else None
    return body if isinstance(body, bytes) else None
