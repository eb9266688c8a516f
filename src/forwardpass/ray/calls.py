"""Calls through Ray Serve deployment handles, with Ray's exceptions translated once.

A forwardpass error raised in a replica comes back as itself (Ray wraps it in a
``RayTaskError``; its cause is the original). A replica that dies with the request in flight,
a deployment with no live replica and back-pressure become :class:`Unavailable` (503): the
request may be retried, and Ray restarts the replica.
"""

from __future__ import annotations

from typing import Any

from forwardpass.errors import ForwardpassError, InternalError, Unavailable

__all__ = ["call"]


async def call(handle: Any, method: str, model: str, *args: Any) -> Any:
    """``await handle.<method>.remote(*args)`` for model ``model``'s deployment."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    try:
        return await getattr(handle, method).remote(*args)
    except ray_errors.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, ForwardpassError):
            raise type(cause)(cause.message) from None
        raise InternalError(
            f"model {model!r}: its Ray replica failed: {type(cause).__name__}: {cause}"
        ) from None
    except ray_errors.RayActorError as exc:  # ActorDiedError, ActorUnavailableError
        raise Unavailable(
            f"model {model!r}: its Ray replica died with this request in flight "
            f"({type(exc).__name__}); Ray restarts it, retry the request"
        ) from None
    except serve_errors.RayServeException as exc:  # back-pressure, no live replica
        raise Unavailable(f"model {model!r} is unavailable on Ray: {exc}") from None
    except ray_errors.RayError as exc:
        raise Unavailable(f"model {model!r}: Ray failed the call: {exc}") from None
