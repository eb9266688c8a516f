"""``silero-vad``: Silero's voice activity detector, a stateful model served with implicit state.

The ONNX graph ships in the ``silero-vad`` wheel (``silero_vad/data/silero_vad.onnx``). Each
call takes ``input`` f32 ``[1, 576]`` (64 samples of context, then 512 new samples at 16 kHz),
``sr`` (the sample rate) and the recurrent ``state`` f32 ``[2, 1, 128]``, and answers the speech
probability ``output`` ``[1, 1]`` and the next state ``stateN``.

The config keeps ``state`` on the server (Triton's implicit state, ``sequence_batching.state``):
a client streams a sequence of chunks with ``sequence_id`` / ``sequence_start`` /
``sequence_end`` and never sends the state. ``max_batch_size`` is 0 because the graph cannot be
batched the way Triton's implicit state batches: the state's batch axis is axis 1 (Triton
stacks slot states along axis 0), and ``sr`` is one scalar for the whole batch. Each instance
therefore holds one sequence at a time; the config asks for two instances, and further
sequences wait in the backlog for a free one.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from forwardpass.zoo.registry import PROVENANCE_FILE, Built, Recipe, provenance

__all__ = ["CONFIG", "RECIPE", "onnx_path"]

CONFIG = """\
# Silero VAD v6 (silero-vad 6.2.3), served with implicit state: see forwardpass.zoo.silero_vad.
max_batch_size: 0
input [
  { name: "input" data_type: TYPE_FP32 dims: [ 1, 576 ] },
  { name: "sr" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } }
]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 1, 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
sequence_batching {
  direct { }
  max_sequence_idle_microseconds: 30000000
  state [
    {
      input_name: "state"
      output_name: "stateN"
      data_type: TYPE_FP32
      dims: [ 2, 1, 128 ]
      initial_state { data_type: TYPE_FP32 dims: [ 2, 1, 128 ] zero_data: true name: "zeros" }
    }
  ]
}
parameters [
  { key: "intra_op_thread_count" value: { string_value: "1" } },
  { key: "inter_op_thread_count" value: { string_value: "1" } }
]
"""


def onnx_path() -> Path:
    """The ONNX file inside the installed ``silero_vad`` package."""
    return Path(str(importlib.resources.files("silero_vad") / "data" / "silero_vad.onnx"))


def build(repository: Path, name: str) -> Built:
    source = onnx_path()
    target = repository / name
    (target / "1").mkdir(parents=True)
    (target / "1" / "model.onnx").write_bytes(source.read_bytes())
    (target / "config.pbtxt").write_text(f'name: "{name}"\n' + CONFIG, encoding="utf-8")
    (target / PROVENANCE_FILE).write_bytes(provenance(RECIPE, copied_from=source.name))
    return Built(("the ONNX graph as the silero-vad wheel ships it; state kept by the server",))


RECIPE = Recipe(
    name="silero-vad",
    task="voice activity detection, 16 kHz audio (stateful)",
    summary="Silero VAD v6: speech probability per 32 ms chunk, recurrent state kept server-side",
    source="PyPI silero-vad==6.2.3 (silero_vad/data/silero_vad.onnx)",
    license="MIT (Silero Team)",
    modules=("silero_vad",),
    pip="pip install silero-vad==6.2.3",
    build=build,
    distributions=("silero-vad",),
)
