"""The site's own executor for its SuperNode (runs in ``clinfl site run``'s process).

clinfl starts the SuperNode with ``--isolation process``, so the SuperNode launches nothing: no
``flwr-clientapp`` process, no bundle installation, no runtime dependency installation. This
loop asks the SuperNode's local Runtime API (on 127.0.0.1, behind a shared secret) for the next
task, reads its message and the run's bundle, hands both to
:class:`~site_agent.deploy.deployed_site.DeployedSite` (which checks the bundle and never runs
it), and pushes the reply. Keeping one long-lived process is what lets a secure-aggregation
round keep its secrets in memory from stage to stage.

Flower 1.42.0 has no public API for a custom executor: the Runtime API steps below are those of
Flower's own ``flwr.supernode.runtime.run_clientapp`` (whose ``push_message`` and
``push_task_output`` are reused), with a deadline on the message pull.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

import httpx
from flwr.app import Context, Message, Metadata
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from clinfl.transport.flower.records import read_call, reply_content

ACQUIRE_RETRY_SECONDS = 5.0
PULL_SECONDS = 60.0  # Flower's own default is 2 hours: a message whose run ended never arrives
log = logging.getLogger("clinfl.site")


class CallHandler(Protocol):
    """Answers one call (see :meth:`~site_agent.deploy.deployed_site.DeployedSite.handle`)."""

    def handle(
        self, *, flower_run: int, bundle: bytes, bundle_hash: str, call: str, body: bytes
    ) -> bytes:
        """Return the reply body."""
        ...


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """Pull the task's message, context, run and bundle (Flower's own steps, with a deadline).

    Raises:
        ObjectPullError: if the message's parts do not all arrive within ``PULL_SECONDS``.
        RuntimeError: if the task has no message.
    """
    task = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = task.task_id  # one task at a time in this process, as in Flower's
    TaskIdentity.run_id = task.run.run_id
    TaskIdentity.node_id = task.context.node_id
    context, run, fab = (
        context_from_proto(task.context),
        run_from_proto(task.run),
        fab_from_proto(task.fab),
    )
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the task has no message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        max_time=PULL_SECONDS,
    )
    return with_message_id(message, tree.object_id), context, run, fab


def with_message_id(message: Message, message_id: str) -> Message:
    """Return ``message`` with its id, which a reply names (a pulled message arrives without it).

    Flower 1.42.0's public API cannot set it: ``Metadata.message_id`` has no setter and
    ``Message``'s constructors take no metadata (Flower's own pull writes the private
    ``_message_id`` field). So the message is rebuilt from its public metadata fields with
    ``flwr.app.message.make_message``, the helper Flower builds messages from metadata with.
    """
    old = message.metadata
    metadata = Metadata(
        run_id=old.run_id,
        message_id=message_id,
        src_node_id=old.src_node_id,
        dst_node_id=old.dst_node_id,
        reply_to_message_id=old.reply_to_message_id,
        group_id=old.group_id,
        created_at=old.created_at,
        ttl=old.ttl,
        message_type=old.message_type,
        src_task_id=old.src_task_id,
        dst_task_id=old.dst_task_id,
    )
    if message.has_error():
        return make_message(metadata, error=message.error)
    return make_message(metadata, content=message.content)


def message_call(message: Message) -> tuple[str, bytes]:
    """Return the call name and body a coordinator's message carries ('' if it has none)."""
    return read_call(message.content if message.has_content() else None)


class SiteExecutor:
    """Pulls tasks from the SuperNode at ``runtime_address`` and answers them one at a time."""

    def __init__(
        self,
        runtime_address: str,
        handler: CallHandler,
        *,
        superexec_secret: bytes,
        poll_seconds: float = 0.2,
        on_task: Callable[[str], None] | None = None,
    ) -> None:
        self._address = runtime_address
        self._handler = handler
        self._poll = poll_seconds
        self._on_task = on_task
        acquire_retries = make_simple_http_retry_invoker()
        acquire_retries.max_time = ACQUIRE_RETRY_SECONDS  # then the loop checks `stop` again
        self._acquirer = RuntimeHttpClient.from_server_address(
            server_address=runtime_address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                SuperExecAuthHttpInterceptor(
                    master_secret=superexec_secret,
                    protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"}),
                ),
            ],
            retry_invoker=acquire_retries,
        )

    def run(self, stop: threading.Event) -> None:
        """Serve tasks until ``stop`` is set (a SuperNode that is restarting is waited for)."""
        while not stop.is_set():
            try:
                served = self.serve_one()
            except httpx.HTTPError as error:
                log.debug("the SuperNode's Runtime API is not answering: %s", error)
                served = False
            if not served:
                stop.wait(self._poll)
        self._acquirer.close()

    def serve_one(self) -> bool:
        """Serve the next task if there is one; return whether there was."""
        acquired = self._acquirer.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        )
        if not acquired.HasField("task") or not acquired.token:
            return False
        self._serve(acquired.token)
        return True

    def _serve(self, token: str) -> None:
        client = RuntimeHttpClient.from_server_address(
            server_address=self._address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        context = None
        message: Message | None = None
        status, details = SubStatus.FAILED, "the clinfl site could not answer"
        try:
            message, context, run, fab = pull_task_input(client)
            call, body = message_call(message)
            if self._on_task is not None:
                self._on_task(call)
            reply_body = self._handler.handle(
                flower_run=run.run_id,
                bundle=fab.content,
                bundle_hash=fab.hash_str,
                call=call,
                body=body,
            )
            reply = Message(reply_content(reply_body), reply_to=message)
            push_message(client, reply, context)
            status, details = SubStatus.COMPLETED, ""
        except Exception:  # a broken task must not end the site: log it and take the next
            log.exception("task failed")
            if message is not None and context is not None:
                # the SuperNode waits for a reply before it takes the next message: always send one
                failure = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details)
                with contextlib.suppress(Exception):
                    push_message(client, Message(failure, reply_to=message), context)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()
