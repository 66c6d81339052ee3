"""R9 (SECAGG.md, "Version 2"): every failure while handling a peer's input fails closed.

A stage method wrapped with :func:`fail_closed` never lets anything but a
:class:`~clinfl.errors.ProtocolViolation` escape. Any other exception (a low-order X25519 key, a
non-finite parameter, a malformed share) becomes one, the session is aborted for good, its
secrets are wiped, and the reason goes to the site's audit hook.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, Protocol, TypeVar, runtime_checkable

from clinfl.errors import InternalError, ProtocolViolation
from clinfl.secagg.settings import RoundParameters

P = ParamSpec("P")
R = TypeVar("R")


@runtime_checkable
class FailClosedSession(Protocol):
    """What :func:`fail_closed` needs of a session."""

    @property
    def params(self) -> RoundParameters:
        """The round's parameters."""
        ...

    @property
    def site_id(self) -> str:
        """The site's name."""
        ...

    @property
    def aborted(self) -> bool:
        """True once the session refused something."""
        ...

    def _abort(self, violation: ProtocolViolation) -> None:
        """Abort for good: wipe the secrets and audit ``violation``."""
        ...


def fail_closed(method: Callable[P, R]) -> Callable[P, R]:
    """Turn any exception raised while handling peer input into an audited ProtocolViolation."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        session = args[0]
        if not isinstance(session, FailClosedSession):
            raise InternalError(f"@fail_closed wraps {method.__name__}, not a session's method")
        try:
            return method(*args, **kwargs)
        except ProtocolViolation as violation:
            if not session.aborted:
                session._abort(violation)
            raise
        except Exception as error:  # R9: every failure on peer input fails closed
            failure = ProtocolViolation(
                f"round {session.params.round_id}, {session.site_id}: malformed input at "
                f"{method.__name__} ({type(error).__name__})",
                remedy="the round is abandoned and no share was revealed; check the coordinator",
            )
            session._abort(failure)
            raise failure from None

    return wrapper
