"""Several processes serving as one server: ``forwardpass serve --workers N``.

Why processes, each with its own engine: one Python process serves from one event loop, so
HTTP parsing, JSON and batching use one core however many the machine has. N workers, each a
whole forwardpass (engine, models, batchers, HTTP and gRPC on the same ports through
SO_REUSEPORT), use N cores and share nothing on the request path: no engine to contend on, no
tensors crossing a process boundary. Each worker runs its ONNX Runtime sessions with one
intra-op thread by default (``ServerConfig.intra_op_threads``), so N workers do not start N
thread pools of every core.

What makes them one server from outside (:mod:`forwardpass.cluster.peers`): statistics and
``/metrics`` summed over the workers, repository load/unload and trace/log settings applied on
all of them, a restarted worker catching up with the others. The supervisor
(:mod:`forwardpass.cluster.supervisor`) restarts a worker that dies and drains all on
SIGTERM/SIGINT.

Not done: models on a GPU. N workers would each load their own copy onto the device; the
design for CUDA models (N front-end processes feeding one engine process per GPU, tensors
through shared memory) is left for when forwardpass serves on GPUs.
"""

from forwardpass.cluster.supervisor import parse_workers, run_workers, usable_cores

__all__ = ["parse_workers", "run_workers", "usable_cores"]
