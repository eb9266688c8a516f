"""Who may call which API: Triton's restricted API groups and an optional inference key.

One :class:`AccessPolicy` per wire, built from :class:`~forwardpass.config.ServerConfig`, knows
nothing of HTTP or gRPC: a protocol names the API group of each call and hands over the
request's headers (HTTP) or metadata (gRPC) with lower-case keys, and
:meth:`AccessPolicy.check` returns or raises.

- A restricted group (``--http-restricted-api`` / ``--grpc-restricted-protocol``, each
  ``<group>,<group>...:<KEY>=<VALUE>``) requires header ``KEY`` (gRPC: metadata
  ``triton-grpc-protocol-KEY``, as Triton names it) to equal ``VALUE``; otherwise
  :class:`~forwardpass.errors.PermissionDenied`, with Triton's message.
- An API key (``--api-key``) guards the ``inference`` group: ``Authorization: Bearer <key>``,
  or the bare key in the header ``--api-key-header`` names; otherwise
  :class:`~forwardpass.errors.Unauthenticated`.

Secrets are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from forwardpass.config import ServerConfig
from forwardpass.errors import InvalidArgument, PermissionDenied, Unauthenticated

__all__ = ["API_GROUPS", "AccessPolicy", "Restriction"]

#: Triton's API groups, in its order.
API_GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)

#: The prefix Triton's gRPC endpoint puts before a restricted key in the request metadata.
GRPC_PREFIX = "triton-grpc-protocol-"


@dataclass(frozen=True, slots=True)
class Restriction:
    """A header a group of APIs requires, and the value it must carry."""

    header: str
    value: str


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The restricted groups and the inference key of one wire."""

    restrictions: Mapping[str, Restriction] = field(default_factory=dict)
    api_key: str = ""
    api_key_header: str = "authorization"

    @classmethod
    def from_config(cls, config: ServerConfig, protocol: str = "http") -> AccessPolicy:
        """The policy of ``protocol`` (``http`` or ``grpc``); InvalidArgument for a bad spec."""
        if protocol == "http":
            specs, prefix, flag = config.http_restricted_api, "", "--http-restricted-api"
        elif protocol == "grpc":
            specs, prefix = config.grpc_restricted_protocol, GRPC_PREFIX
            flag = "--grpc-restricted-protocol"
        else:
            raise ValueError(f"unknown protocol {protocol!r}")
        restrictions: dict[str, Restriction] = {}
        for spec in specs:
            groups, restriction = _parse(spec, flag, prefix)
            for group in groups:
                if group in restrictions:
                    raise InvalidArgument(
                        f"{flag}: API group {group!r} can not be specified in multiple groups"
                    )
                restrictions[group] = restriction
        return cls(restrictions, config.api_key, config.api_key_header)

    @property
    def active(self) -> bool:
        return bool(self.restrictions or self.api_key)

    def check(self, group: str, headers: Mapping[str, str]) -> None:
        """Return if a call to ``group`` with these (lower-case) headers may proceed."""
        restriction = self.restrictions.get(group)
        if restriction is not None:
            sent = headers.get(restriction.header)
            if sent is None or not _equal(sent, restriction.value):
                raise PermissionDenied(
                    f"This API is restricted, expecting header '{restriction.header}'"
                )
        if self.api_key and group == "inference":
            self._check_key(headers)

    def _check_key(self, headers: Mapping[str, str]) -> None:
        sent = headers.get(self.api_key_header)
        bearer = self.api_key_header == "authorization"
        expected = "Bearer <key>" if bearer else "the API key"
        if sent is None:
            raise Unauthenticated(
                f"inference requires an API key: send header '{self.api_key_header}' "
                f"with {expected}"
            )
        if bearer:
            scheme, _, token = sent.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated("the Authorization header must be 'Bearer <key>'")
            sent = token.strip()
        if not _equal(sent, self.api_key):
            raise Unauthenticated("invalid API key")


def _equal(sent: str, expected: str) -> bool:
    # compare_digest on str accepts only ASCII; bytes compare anything in constant time.
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def _parse(spec: str, flag: str, prefix: str) -> tuple[list[str], Restriction]:
    groups_text, sep, pair = spec.partition(":")
    key, eq, value = pair.partition("=")
    if not sep or not eq or not groups_text or not key.strip():
        raise InvalidArgument(f"{flag} {spec!r} must be <group>,<group>...:<key>=<value>")
    groups = [g.strip() for g in groups_text.split(",")]
    for group in groups:
        if group not in API_GROUPS:
            raise InvalidArgument(
                f"{flag}: unknown API group {group!r} (known: {', '.join(API_GROUPS)})"
            )
    return groups, Restriction(prefix + key.strip().lower(), value)
