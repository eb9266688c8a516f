"""Train forwardpass's embedded default model: a tiny CNN on scikit-learn's ``load_digits``.

Run with a Python that has torch (``pip install torch==2.13.0``) and scikit-learn::

    python scripts/train_digits.py [--out src/forwardpass/models/digits] [--epochs 60]

It writes, under ``--out``:

- ``1/model.onnx``: input ``image`` FP32 [-1,1,8,8] (pixels in [0,1], ink = high values, i.e.
  sklearn's 0..16 divided by 16); output ``probabilities`` FP32 [-1,10] (softmax in the graph);
- ``config.pbtxt``: the Triton model configuration;
- ``labels.txt``: the class names 0..9, one per line;
- ``TRAINING.json``: dataset, split, seed, epochs, held-out accuracy, torch/ONNX agreement;
- ``samples/digit_<label>_0.png``: one held-out digit per class, 64x64, black ink on white, the
  way a scan looks (a client must invert and downscale before sending it).

Everything is seeded; nothing is downloaded (``load_digits`` ships inside scikit-learn).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20240607
TEST_FRACTION = 0.2
SAMPLE_SIZE = 64
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "forwardpass" / "models" / "digits"

CONFIG_PBTXT = """\
name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "image"
    data_type: TYPE_FP32
    dims: [ 1, 8, 8 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
parameters {
  key: "intra_op_thread_count"
  value: { string_value: "1" }
}
# Read by `forwardpass predict` when it turns an image file into the input: the model was
# trained on light ink on a dark ground (scikit-learn's digits), photos are usually the reverse.
parameters {
  key: "image_invert"
  value: { string_value: "auto" }
}
"""


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def _build_model() -> Any:
    """Two small convolutions, one pooling, a small classifier head; softmax at the end."""
    import torch
    from torch import nn

    class DigitsNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 16, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),  # 16 x 4 x 4
            )
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(0.25),
                nn.Linear(16 * 4 * 4, 32),
                nn.ReLU(),
                nn.Linear(32, 10),
            )

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(image))

    return DigitsNet()


class _WithSoftmax:
    """Wraps the logits model so the exported graph ends in a softmax."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch
        from torch import nn

        class Exported(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, image: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.inner(image), dim=1)

        return Exported(model)


def load_split(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as float32 [N,1,8,8] in [0,1], split stratified into train and held-out."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=seed, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def _augment(batch: Any, generator: Any) -> Any:
    """Shift each image by at most one pixel: digits are not always centred."""
    import torch

    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1))
    out = torch.empty_like(batch)
    shifts = torch.randint(0, 3, (batch.shape[0], 2), generator=generator)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def train(
    x_train: np.ndarray, y_train: np.ndarray, epochs: int, seed: int = SEED
) -> tuple[Any, list[float]]:
    """Adam with cosine decay, mini-batches of 64; returns the model and per-epoch losses."""
    import torch

    model = _build_model()
    generator = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(x_train)
    ys = torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses: list[float] = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        total = 0.0
        for start in range(0, len(xs), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            loss = loss_fn(model(_augment(xs[idx], generator)), ys[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        scheduler.step()
        losses.append(total / len(xs))
    model.eval()
    return model, losses


def export_onnx(model: Any, path: Path) -> None:
    """Export with a dynamic batch axis, opset 17, the TorchScript exporter."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    exported = _WithSoftmax.wrap(model).eval()
    dummy = torch.zeros(1, 1, 8, 8)
    with warnings.catch_warnings():
        # The TorchScript exporter is asked for on purpose (the dynamo one needs onnxscript).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            exported,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    # Keep the file self-describing and free of exporter noise.
    import onnx

    proto = onnx.load(str(path))
    proto.producer_name = "forwardpass/scripts/train_digits.py"
    proto.producer_version = f"torch {torch.__version__}"
    proto.doc_string = "8x8 digit classifier trained on scikit-learn load_digits"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def to_scan(image: np.ndarray, size: int = SAMPLE_SIZE) -> Any:
    """An [8,8] image in [0,1] (ink high) as a ``size``-square PNG, black ink on white."""
    from PIL import Image

    gray = np.rint(255.0 * (1.0 - np.clip(image, 0.0, 1.0))).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BILINEAR)


def from_scan(picture: Any) -> np.ndarray:
    """What a client does with a scan: grayscale, downscale to 8x8 by area, invert, scale."""
    from PIL import Image

    small = picture.convert("L").resize((8, 8), Image.Resampling.BOX)
    return (1.0 - np.asarray(small, dtype=np.float32) / 255.0)[None, :, :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import sklearn
    import torch

    _seed_everything(args.seed)
    torch.set_num_threads(1)
    x_train, x_test, y_train, y_test = load_split(args.seed)
    model, losses = train(x_train, y_train, args.epochs, args.seed)

    out: Path = args.out
    onnx_path = out / "1" / "model.onnx"
    export_onnx(model, onnx_path)

    with torch.no_grad():
        torch_probs = torch.softmax(model(torch.from_numpy(x_test)), dim=1).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"image": x_test})[0]
    max_diff = float(np.max(np.abs(onnx_probs - torch_probs)))
    accuracy = float(np.mean(onnx_probs.argmax(axis=1) == y_test))
    train_probs = session.run(["probabilities"], {"image": x_train})[0]
    train_accuracy = float(np.mean(train_probs.argmax(axis=1) == y_train))

    (out / "config.pbtxt").write_text(CONFIG_PBTXT)
    (out / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))

    # One held-out sample per class, chosen so the scan round trip still classifies correctly
    # with a clear margin: these files are what users and tests feed `predict`.
    samples_dir = out / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    for stale in samples_dir.glob("digit_*.png"):
        stale.unlink()
    sample_indices: dict[int, int] = {}
    for label in range(10):
        for index in np.flatnonzero(y_test == label):
            picture = to_scan(x_test[index, 0])
            back = from_scan(picture)[None]
            probs = session.run(["probabilities"], {"image": back})[0][0]
            if int(probs.argmax()) == label and float(probs[label]) >= 0.9:
                picture.save(samples_dir / f"digit_{label}_0.png", optimize=True)
                sample_indices[label] = int(index)
                break
        else:
            raise SystemExit(f"no held-out {label} survives the scan round trip")

    parameters = int(sum(p.numel() for p in model.parameters()))
    record = {
        "model": "digits",
        "dataset": "sklearn.datasets.load_digits (1797 8x8 grayscale images, 10 classes)",
        "preprocessing": "pixel / 16.0 -> float32 in [0,1], ink = high values, NCHW [B,1,8,8]",
        "split": {
            "method": "sklearn.model_selection.train_test_split, stratified",
            "test_fraction": TEST_FRACTION,
            "random_state": args.seed,
            "train_size": len(y_train),
            "test_size": len(y_test),
        },
        "seed": args.seed,
        "epochs": args.epochs,
        "optimizer": "Adam lr=3e-3 weight_decay=1e-4, cosine decay, batch 64, +/-1 px shifts",
        "architecture": "conv3x3(1->8) relu conv3x3(8->16) relu maxpool2 "
        "dropout linear(256->32) relu linear(32->10) softmax",
        "parameters": parameters,
        "final_train_loss": round(losses[-1], 6),
        "train_accuracy": round(train_accuracy, 6),
        "heldout_accuracy": round(accuracy, 6),
        "torch_onnx_max_abs_diff": max_diff,
        "onnx": {
            "file": "1/model.onnx",
            "bytes": onnx_path.stat().st_size,
            "opset": 17,
            "input": {"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]},
            "output": {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        },
        "samples": {
            f"samples/digit_{label}_0.png": {"heldout_index": idx, "label": label}
            for label, idx in sorted(sample_indices.items())
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
        },
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (out / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")

    print(f"held-out accuracy {accuracy:.4f} ({len(y_test)} images), train {train_accuracy:.4f}")
    print(f"torch vs onnx max abs diff {max_diff:.2e}")
    print(f"{onnx_path} {onnx_path.stat().st_size} bytes, {parameters} parameters")
    if accuracy < 0.97:
        print("held-out accuracy below 0.97", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
