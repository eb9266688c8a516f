"""AccessPolicy: Triton's restricted API groups and the inference key, protocol-free."""

from __future__ import annotations

import pytest

from forwardpass.access import API_GROUPS, AccessPolicy
from forwardpass.config import ServerConfig
from forwardpass.errors import InvalidArgument, PermissionDenied, Unauthenticated


def policy(protocol: str = "http", **fields: object) -> AccessPolicy:
    return AccessPolicy.from_config(ServerConfig(**fields), protocol)  # type: ignore[arg-type]


def test_no_configuration_allows_everything() -> None:
    open_policy = policy()
    assert not open_policy.active
    for group in API_GROUPS:
        open_policy.check(group, {})


def test_restricted_groups_need_their_header() -> None:
    admin = policy(http_restricted_api=("model-repository,statistics:Admin-Key=s3cret",))
    admin.check("model-repository", {"admin-key": "s3cret"})
    admin.check("inference", {})  # not in a group: open
    for headers in ({}, {"admin-key": "wrong"}, {"admin-key": "s3cret "}):
        with pytest.raises(PermissionDenied, match="This API is restricted, expecting header"):
            admin.check("statistics", headers)


def test_grpc_keys_carry_tritons_prefix() -> None:
    admin = policy("grpc", grpc_restricted_protocol=("model-repository:admin-key=v",))
    admin.check("model-repository", {"triton-grpc-protocol-admin-key": "v"})
    with pytest.raises(PermissionDenied, match="'triton-grpc-protocol-admin-key'"):
        admin.check("model-repository", {"admin-key": "v"})


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("model-repository", "must be <group>"),
        ("model-repository:key", "must be <group>"),
        (":k=v", "must be <group>"),
        ("model-repo:k=v", "unknown API group 'model-repo'"),
    ],
)
def test_bad_specs_are_refused(spec: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        policy(http_restricted_api=(spec,))


def test_a_group_in_two_specs_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="'health' can not be specified in multiple"):
        policy(http_restricted_api=("model-repository,health:k1=v1", "metadata,health:k2=v2"))


def test_bearer_key_guards_inference_only() -> None:
    keyed = policy(api_key="k3y")
    keyed.check("inference", {"authorization": "Bearer k3y"})
    keyed.check("inference", {"authorization": "bearer  k3y"})
    keyed.check("health", {})
    keyed.check("metadata", {})
    for headers, words in [
        ({}, "requires an API key"),
        ({"authorization": "Basic k3y"}, "Bearer <key>"),
        ({"authorization": "Bearer wrong"}, "invalid API key"),
        ({"authorization": "Bearer é"}, "invalid API key"),
    ]:
        with pytest.raises(Unauthenticated, match=words):
            keyed.check("inference", headers)


def test_key_in_a_named_header() -> None:
    keyed = policy(api_key="k3y", api_key_header="x-api-key")
    keyed.check("inference", {"x-api-key": "k3y"})
    with pytest.raises(Unauthenticated, match="'x-api-key'"):
        keyed.check("inference", {"authorization": "Bearer k3y"})
    with pytest.raises(InvalidArgument, match="lower-case header name"):
        ServerConfig(api_key_header="X-Api-Key")


def test_restricted_specs_from_the_environment_split_on_semicolons() -> None:
    config = ServerConfig.from_env(
        {"FORWARDPASS_HTTP_RESTRICTED_API": "model-repository,statistics:k=v;health:h=1"}
    )
    assert config.http_restricted_api == ("model-repository,statistics:k=v", "health:h=1")
