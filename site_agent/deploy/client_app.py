"""The ClientApp named in clinfl's bundle: it refuses to run.

clinfl sites answer messages in their own executor (``clinfl site run`` starts the SuperNode
with ``--isolation process``), so no SuperNode of a clinfl federation ever loads this. If one is
started by hand with Flower's default executor, every message fails with this explanation instead
of running anything.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def refuse(message: Message, context: Context) -> Message:
    """Refuse: clinfl sites run only through ``clinfl site run``."""
    raise RuntimeError("clinfl sites answer only through `clinfl site run` (its own executor)")
