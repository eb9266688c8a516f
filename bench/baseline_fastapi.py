"""A plain FastAPI + onnxruntime endpoint: the reference a hand-made service reaches.

It speaks just enough of the Open Inference Protocol (model metadata, config, JSON infer) for
``forwardpass bench`` to drive it, and runs ``InferenceSession.run`` inline per request: no
batching, no queue, orjson for (de)serialisation — the best case of the usual hand-written
service, so that forwardpass's scheduling overhead shows against it.

    python bench/baseline_fastapi.py MODEL_DIR --port 8300   # MODEL_DIR/1/model.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

_TYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(int32)": "INT32"}


def build_app(model_dir: Path) -> FastAPI:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    name = model_dir.name
    inputs = session.get_inputs()
    outputs = [o.name for o in session.get_outputs()]

    def tensor_meta(t: ort.NodeArg) -> dict[str, object]:
        return {
            "name": t.name,
            "datatype": _TYPES.get(t.type, "FP32"),
            "shape": [d if isinstance(d, int) else -1 for d in t.shape],
        }

    metadata = orjson.dumps(
        {
            "name": name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [tensor_meta(i) for i in inputs],
            "outputs": [tensor_meta(o) for o in session.get_outputs()],
        }
    )
    config = orjson.dumps({"name": name, "max_batch_size": 0})
    app = FastAPI()

    @app.get(f"/v2/models/{name}")
    async def meta() -> Response:
        return Response(metadata, media_type="application/json")

    @app.get(f"/v2/models/{name}/config")
    async def cfg() -> Response:
        return Response(config, media_type="application/json")

    @app.post(f"/v2/models/{name}/infer")
    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        feed = {
            t["name"]: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
            for t in body["inputs"]
        }
        results = session.run(outputs, feed)
        payload = {
            "model_name": name,
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
                for n, r in zip(outputs, results, strict=True)
            ],
        }
        return Response(orjson.dumps(payload), media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8300)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.model_dir),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
