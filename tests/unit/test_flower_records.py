"""How calls ride in Flower messages, at both ends, through Flower's public fields only."""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Message, Metadata
from flwr.app.message import make_message

from clinfl.transport.flower.records import call_content, read_reply, reply_content
from site_agent.deploy.executor import message_call, with_message_id

ROOT = Path(__file__).resolve().parents[2]


def _pulled(content_call: str, body: bytes) -> Message:
    """A coordinator's message as the site's executor inflates it: without its id."""
    metadata = Metadata(
        run_id=5,
        message_id="",
        src_node_id=1,
        dst_node_id=9,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type="query",
        src_task_id=3,
    )
    return make_message(metadata, content=call_content(content_call, body))


def test_a_reply_names_the_message_it_answers() -> None:
    message = with_message_id(_pulled("secagg_sign", b"[]"), "object-id")
    assert message_call(message) == ("secagg_sign", b"[]")
    reply = Message(reply_content(b"{}"), reply_to=message)
    assert reply.metadata.reply_to_message_id == "object-id"
    assert reply.metadata.dst_node_id == 1 and reply.metadata.run_id == 5
    assert read_reply(reply.content) == b"{}"


def test_no_module_writes_or_reads_flowers_private_fields() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("clinfl", "site_agent", "coordinator")
        for path in (ROOT / package).glob("**/*.py")
        if "__dict__[" in path.read_text()
    ]
    assert offenders == []
