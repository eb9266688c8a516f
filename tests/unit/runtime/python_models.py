"""Python-backend model folders for the tests: Triton's python_backend examples written again
(add_sub, BLS, decoupled repeat and square, the preprocessing example's shape), native
classes, and models that fail in every way the backend must report."""

from __future__ import annotations

import textwrap
from pathlib import Path

ADD_SUB_CONFIG = """
name: "add_sub"
backend: "python"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

ADD_SUB = """
import json
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        self.name = args["model_name"]
        out0 = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        out1 = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.dtype0 = pb_utils.triton_string_to_numpy(out0["data_type"])
        self.dtype1 = pb_utils.triton_string_to_numpy(out1["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out_0 = pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.dtype0))
            out_1 = pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.dtype1))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1]))
        return responses

    def finalize(self):
        print("Cleaning up...")
"""

BLS_CONFIG = """
name: "bls_sync"
backend: "python"
input [ { name: "MODEL_NAME" data_type: TYPE_STRING dims: [ 1 ] },
        { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
        { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

BLS = """
import asyncio
import json
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            model_name = pb_utils.get_input_tensor_by_name(request, "MODEL_NAME")
            model_name_string = model_name.as_numpy()[0]
            infer_request = pb_utils.InferenceRequest(
                model_name=model_name_string,
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[in_0, in_1],
            )
            if request.parameters() and json.loads(request.parameters()).get("async"):
                infer_response = asyncio.run(infer_request.async_exec())
            else:
                infer_response = infer_request.exec()
            if infer_response.has_error():
                raise pb_utils.TritonModelException(infer_response.error().message())
            responses.append(
                pb_utils.InferenceResponse(output_tensors=infer_response.output_tensors())
            )
        return responses
"""

REPEAT_CONFIG = """
name: "repeat_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
        { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] },
        { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
         { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] } ]
"""

REPEAT = """
import json
import threading
import time

import numpy
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("needs the decoupled transaction policy")
        self.out_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(model_config, "OUT")["data_type"])
        self.idx_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(model_config, "IDX")["data_type"])
        self.inflight = 0
        self.lock = threading.Lock()

    def execute(self, requests):
        if len(requests) != 1:
            raise pb_utils.TritonModelException("unsupported batch size " + str(len(requests)))
        request = requests[0]
        thread = threading.Thread(
            target=self.response_thread,
            args=(request.get_response_sender(),
                  pb_utils.get_input_tensor_by_name(request, "IN").as_numpy(),
                  pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()),
            daemon=True,
        )
        with self.lock:
            self.inflight += 1
        thread.start()
        wait = pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()
        time.sleep(wait[0] / 1000)
        return None

    def response_thread(self, sender, values, delays):
        for idx in range(values.size):
            time.sleep(delays[idx] / 1000)
            response = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("IDX", numpy.array([idx], self.idx_dtype)),
                pb_utils.Tensor("OUT", numpy.array([values[idx]], self.out_dtype)),
            ])
            sender.send(response)
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        with self.lock:
            self.inflight -= 1

    def finalize(self):
        while True:
            with self.lock:
                if self.inflight == 0:
                    return
            time.sleep(0.05)
"""

SQUARE_CONFIG = """
name: "square_int32"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

SQUARE = """
import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        in_config = pb_utils.get_input_config_by_name(model_config, "IN")
        if in_config["dims"] != [1] or in_config["data_type"] != "TYPE_INT32":
            raise pb_utils.TritonModelException("IN must be TYPE_INT32 [1]")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            threading.Thread(target=self.respond, args=(sender, value), daemon=True).start()
        return None

    def respond(self, sender, value):
        for _ in range(value[0]):
            out = pb_utils.Tensor("OUT", np.array([value[0]], np.int32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
        sender.close()
"""

# The preprocessing example's shape: raw image bytes in (UINT8 [-1], batched), a
# normalized FP32 [3, 224, 224] out, one request per image.
PREPROCESS_CONFIG = """
name: "preprocess"
backend: "python"
max_batch_size: 8
dynamic_batching { }
input [ { name: "INPUT_0" data_type: TYPE_UINT8 dims: [ -1 ] } ]
output [ { name: "OUTPUT_0" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
"""

PREPROCESS = """
import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


class TritonPythonModel:
    def initialize(self, args):
        config = pb_utils.get_output_config_by_name(json.loads(args["model_config"]), "OUTPUT_0")
        self.dtype = pb_utils.triton_string_to_numpy(config["data_type"])

    def execute(self, requests):
        responses = []
        mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
        std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, "INPUT_0").as_numpy()
            images = []
            for row in batch:
                image = Image.open(io.BytesIO(row.tobytes())).convert("RGB").resize((224, 224))
                pixels = np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0
                images.append((pixels - mean) / std)
            out = pb_utils.Tensor("OUTPUT_0", np.stack(images).astype(self.dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""

IDENTITY_CONFIG = """
backend: "python"
max_batch_size: 64
dynamic_batching { }
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
parameters { key: "execute_timeout_s" value { string_value: "2" } }
"""

#: Returns its input; x containing -1 sleeps past the timeout, -2 exits, -3 crashes hard,
#: -4 answers the wrong dtype, -5 the wrong shape, -6 an error response, -7 raises.
IDENTITY = """
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if (x == -1).any():
                time.sleep(30)
            if (x == -2).any():
                sys.exit(3)
            if (x == -3).any():
                os.kill(os.getpid(), 9)
            if (x == -7).any():
                raise ValueError("x holds -7")
            if (x == -4).any():
                out = x.astype(np.int64)
            elif (x == -5).any():
                out = x[:, :1].reshape(-1)
            else:
                out = x
            if (x == -6).any():
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        "-6 is not allowed", pb_utils.TritonError.INVALID_ARG)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", out)]))
        return responses
"""

WRONG_COUNT = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return []
"""

IMPORT_FAILS = """
import triton_python_backend_utils as pb_utils
import a_module_that_does_not_exist


class TritonPythonModel:
    def execute(self, requests):
        return []
"""

INITIALIZE_FAILS = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("no weights found for " + args["model_name"])

    def execute(self, requests):
        return []
"""

AUTO_COMPLETE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "x", "data_type": "TYPE_INT32", "dims": [2]})
        auto_complete_model_config.add_output({"name": "y", "data_type": "TYPE_INT32", "dims": [2]})
        auto_complete_model_config.set_max_batch_size(4)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([
                pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)
            ])
            for r in requests
        ]
"""

NATIVE = """
import numpy as np


class Doubler:
    inputs = {"x": ("FP32", [3])}
    outputs = {"y": ("FP32", [3])}
    max_batch_size = 16
    batch_sizes = []

    def setup(self):
        self.factor = 2

    def predict(self, x):
        Doubler.batch_sizes.append(x.shape[0])
        return (x * self.factor).tolist()


class Hinted:
    def predict(self, a: np.ndarray, b: float) -> np.ndarray:
        return a.sum(axis=1, keepdims=True) + b


class Words:
    inputs = {"text": ("BYTES", [1])}
    outputs = {"length": ("INT64", [1]), "upper": ("BYTES", [1])}

    def decode_request(self, inputs):
        text = inputs["text"][0, 0].decode()
        if text == "bad":
            raise ValueError("cannot decode 'bad'")
        return text

    def predict(self, batch):
        return [(len(t), t.upper()) for t in batch]

    def encode_response(self, result):
        length, upper = result
        return {"length": np.array([length]), "upper": np.array([upper.encode()], object)}
"""


def write(root: Path, name: str, config: str, model: str | None = None, version: int = 1) -> Path:
    folder = root / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    if model is not None:
        (folder / str(version) / "model.py").write_text(textwrap.dedent(model))
    return folder


def triton_examples(root: Path) -> Path:
    write(root, "add_sub", ADD_SUB_CONFIG, ADD_SUB)
    write(root, "bls_sync", BLS_CONFIG, BLS)
    write(root, "repeat_int32", REPEAT_CONFIG, REPEAT)
    write(root, "square_int32", SQUARE_CONFIG, SQUARE)
    return root
