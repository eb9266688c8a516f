"""Calls through Ray Serve deployment handles, with Ray's exceptions translated once, and
the :class:`Coalescer` that sends requests arriving together in one call.

A forwardpass error raised in a replica comes back as itself (Ray wraps it in a
``RayTaskError``; its cause is the original). A replica that dies with the request in flight,
a deployment with no live replica and back-pressure become :class:`Unavailable` (503): the
request may be retried, and Ray restarts the replica.
"""

from __future__ import annotations

import asyncio
from typing import Any

from forwardpass.errors import ForwardpassError, InternalError, Unavailable
from forwardpass.types import InferRequest, InferResponse

__all__ = ["Coalescer", "call"]


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


class Coalescer:
    """Sends the requests for one model deployment that arrive together in one call.

    At most ``window`` calls are in flight; requests that arrive while all of them are busy
    wait and leave together (up to ``max_items``) when one returns. No timer: a lone request
    goes at once, a busy model gets lists as long as its traffic makes them, and Ray's
    per-call cost (routing, scheduling, serialization) is paid once per list, not per
    request. The replica's engine batches the list's requests with its dynamic batcher.
    """

    def __init__(self, handle: Any, model: str, window: int = 2, max_items: int = 64) -> None:
        self.handle = handle
        self.model = model
        self.window = max(1, window)
        self.max_items = max(1, max_items)
        self.in_flight = 0
        self._pending: list[tuple[InferRequest, asyncio.Future[InferResponse]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def infer(self, request: InferRequest) -> InferResponse:
        future: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if self.in_flight < self.window:
            self._send()
        return await future

    def _send(self) -> None:
        items = self._pending[: self.max_items]
        del self._pending[: self.max_items]
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._call(items))
        self._tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)

    async def _call(self, items: list[tuple[InferRequest, asyncio.Future[InferResponse]]]) -> None:
        try:
            results = await call(self.handle, "infer_batch", self.model, [r for r, _ in items])
            if len(results) != len(items):
                raise InternalError(
                    f"model {self.model!r}: its replica answered {len(results)} of "
                    f"{len(items)} requests"
                )
        except ForwardpassError as exc:
            results = [exc] * len(items)
        except Exception as exc:  # a bug: every request of the call gets the 500
            results = [InternalError(f"{type(exc).__name__}: {exc}")] * len(items)
        except BaseException:  # cancelled (the ingress is stopping): no request waits on
            for _, future in items:
                future.cancel()
            raise
        finally:
            self.in_flight -= 1
            if self._pending:
                self._send()
        for (_, future), result in zip(items, results, strict=True):
            if future.done():  # the client went away
                continue
            if isinstance(result, ForwardpassError):
                # A fresh error per request: one exception object raised in many tasks
                # would share (and grow) one traceback.
                future.set_exception(type(result)(result.message))
            else:
                future.set_result(result)
