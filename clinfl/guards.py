"""Explicit invariant checks that survive ``python -O`` (which removes ``assert``).

Library code never uses ``assert`` (tests/unit/test_no_asserts.py checks it): :func:`present`
narrows a type as ``assert x is not None`` would, and raises
:class:`~clinfl.errors.InternalError` when the invariant does not hold.
"""

from __future__ import annotations

from typing import TypeVar

from clinfl.errors import InternalError

T = TypeVar("T")


def present(value: T | None, what: str) -> T:
    """Return ``value``, which clinfl's own earlier steps must have set.

    Raises:
        InternalError: if ``value`` is None; ``what`` names it in the message.
    """
    if value is None:
        raise InternalError(f"{what} is missing where clinfl relies on it")
    return value
