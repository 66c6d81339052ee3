"""Asking several sites at once: one call per site, results in the order asked.

In one process the calls run in turn (:func:`in_turn`); across a network each call mostly waits
for its reply, so the deployment runs them on threads (:class:`ThreadedFanout`) and a round costs
the slowest site's time instead of the sum of all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")


class Fanout(Protocol):
    """Runs independent calls and returns their results in order (exceptions propagate)."""

    def __call__(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``calls``; return one result per call, in order."""
        ...


def in_turn(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``calls`` one after the other."""
    return [call() for call in calls]


class ThreadedFanout:
    """Run the calls on up to ``max_workers`` threads at once."""

    def __init__(self, max_workers: int = 32) -> None:
        self._max_workers = max_workers

    def __call__(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run ``calls`` concurrently; return their results in order.

        Raises:
            Exception: the first exception a call raised, once every call has finished.
        """
        if len(calls) <= 1:
            return in_turn(calls)
        with ThreadPoolExecutor(max_workers=min(self._max_workers, len(calls))) as pool:
            futures = [pool.submit(call) for call in calls]
            return [future.result() for future in futures]
