"""The monitoring routes of the HTTP API, beside the V2 ones.

- ``GET /v2/models/M/log?since=&limit=&kind=``: the request log's newest rows of M, oldest
  first; ``kind`` ``requests`` (the default), ``events`` (drift alarms turning on or off) or
  ``all``.
- ``GET /v2/models/M[/versions/V]/monitor``: drift per feature, with the monitoring errors,
  disabled sinks and dropped records of M.
- ``POST /v2/models/M/feedback``: ground truth, ``{"id", "truth"}`` or a list of them.
- ``GET /v2/models/M/fairness``: group fairness per version, with intervals and errors.

Each reads or waits on the monitors' thread, so each runs off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from forwardpass.errors import InvalidArgument, NotFound
from forwardpass.monitor.monitoring import LOG_KINDS
from forwardpass.monitor.requestlog import parse_since

if TYPE_CHECKING:
    from forwardpass.engine import Engine

__all__ = ["MONITOR_ACTIONS", "monitor_document", "monitor_route"]

#: action → (HTTP method, Triton API group).
MONITOR_ACTIONS = {
    "log": ("GET", "statistics"),
    "fairness": ("GET", "statistics"),
    "feedback": ("POST", "inference"),
}

_MAX_LIMIT = 10_000


def _query(query: str) -> dict[str, str]:
    parsed = parse_qs(query, keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


async def monitor_route(engine: Engine, action: str, name: str, body: bytes, query: str) -> Any:
    """The JSON document the action answers (the caller checked the method and access)."""
    monitoring = engine.monitoring  # first: a front end without monitors (Ray) says so
    engine.handle(name)  # 404 for a model the server does not know
    loop = asyncio.get_running_loop()
    if action == "log":
        args = _query(query)
        unknown = sorted(set(args) - {"since", "limit", "kind"})
        if unknown:
            raise InvalidArgument(f"unknown query parameter(s) {unknown}; use since, limit, kind")
        since = parse_since(args["since"]) if args.get("since") else None
        raw = args.get("limit", "100")
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if not 1 <= limit <= _MAX_LIMIT:
            raise InvalidArgument(f"limit must be an integer in 1..{_MAX_LIMIT}, got {raw!r}")
        kind = args.get("kind", "requests")
        if kind not in LOG_KINDS:
            raise InvalidArgument(f"kind must be one of {list(LOG_KINDS)}, got {kind!r}")
        rows = await loop.run_in_executor(None, monitoring.log_rows, name, since, limit, kind)
        return {"model": name, "rows": rows}
    if action == "fairness":
        return await loop.run_in_executor(None, monitoring.fairness_document, name)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON in feedback: {exc}") from None
    if not isinstance(document, dict | list):
        raise InvalidArgument("feedback must be an object {'id', 'truth'} or a list of them")
    peers = engine.peers
    if peers is None or not peers.siblings:
        return await loop.run_in_executor(None, monitoring.feedback, name, document)
    return await _cluster_feedback(engine, name, document)


async def _cluster_feedback(engine: Engine, name: str, document: Any) -> Any:
    """``serve --workers N``: a prediction's pending label sits with the worker that made
    it. Join here what this worker made, then hand the other ids to the siblings; ids no
    worker holds are a 404 (the others stay joined: all-or-nothing holds per worker)."""
    from forwardpass.cluster.peers import Call

    assert engine.peers is not None
    loop = asyncio.get_running_loop()
    local = await loop.run_in_executor(None, engine.monitoring.feedback, name, document, True)
    joined, missing = local["joined"], set(local["missing"])
    items = document if isinstance(document, list) else [document]
    if missing:
        rest = [i for i in items if i["id"] in missing]
        for reply in (await engine.peers.ask(Call("feedback", (name, rest)))).values():
            answer = reply.unwrap()
            joined += answer["joined"]
            missing &= set(answer["missing"])
    if missing:
        raise NotFound(
            f"no prediction of model {name!r} awaits ground truth for request id(s) "
            + ", ".join(repr(m) for m in sorted(missing))
            + f" (unknown, expired or already labelled; {joined} other(s) were joined)"
        )
    return {"joined": joined}


async def monitor_document(engine: Engine, name: str, version: str) -> Any:
    """``GET /v2/models/M[/versions/V]/monitor``: the first report builds the version's drift
    monitor (its reference, its embedding network), so it runs off the event loop."""
    handle, loaded = engine.version(name, version)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, engine.monitoring.monitor_document, handle, loaded)
