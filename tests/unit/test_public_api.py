"""The public API: a curated, sorted ``__all__`` whose names all resolve, and a light import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import forwardpass

PUBLIC = [
    "DataType",
    "Engine",
    "ForwardpassError",
    "HttpApp",
    "HttpRequest",
    "HttpResponse",
    "InferRequest",
    "InferResponse",
    "InternalError",
    "InvalidArgument",
    "InvalidModelConfig",
    "InvalidParameter",
    "ModelConfig",
    "ModelRepository",
    "ModelState",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RequestTimeout",
    "RequestedOutput",
    "Server",
    "ServerConfig",
    "Tensor",
    "TensorSpec",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "__version__",
]


def test_all_is_sorted_and_is_exactly_the_curated_list() -> None:
    assert forwardpass.__all__ == sorted(forwardpass.__all__)
    assert len(set(forwardpass.__all__)) == len(forwardpass.__all__)
    assert forwardpass.__all__ == PUBLIC


@pytest.mark.parametrize("name", [n for n in PUBLIC if n != "__version__"])
def test_every_name_resolves_to_the_object_of_its_module(name: str) -> None:
    value = getattr(forwardpass, name)
    assert value.__name__ == name
    assert value.__module__.startswith("forwardpass.")
    # The same object as the defining module's, not a copy.
    module = sys.modules[value.__module__]
    assert getattr(module, name) is value
    assert inspect.getdoc(value), f"{name} has no docstring"


def test_every_error_class_of_the_tree_is_exported() -> None:
    from forwardpass import errors

    tree = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.ForwardpassError)
    }
    assert tree <= set(forwardpass.__all__)


def test_version() -> None:
    from importlib.metadata import version

    assert forwardpass.__version__ == version("forwardpass")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        forwardpass.Nope  # noqa: B018
    assert not hasattr(forwardpass, "engine_factory")


def test_dir_lists_the_public_names() -> None:
    assert set(forwardpass.__all__) <= set(dir(forwardpass))


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from forwardpass import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC)


def test_import_is_light() -> None:
    # A fresh interpreter: importing the package loads neither NumPy nor ONNX Runtime; using a
    # name loads what that name needs.
    code = (
        "import sys, forwardpass\n"
        "heavy = ('numpy', 'onnx', 'onnxruntime', 'orjson', 'prometheus_client', 'yaml', 'PIL')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "forwardpass.ServerConfig\n"
        "print('onnxruntime' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split("\n")[:2] == ["[]", "False"]
