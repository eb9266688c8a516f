"""Drift detection quality: false alarms on clean traffic, detection delay under shift.

Tabular (zoo ``breast-cancer``): the reference profile is the training split (426 rows,
``forwardpass monitor reference``); traffic is the held-out rows (143), streamed in fresh
random orders, one row per request, through the model in-process (the engine's batcher and
the same profiler the server uses). Reported:

- the share of evaluated windows that alarm on clean held-out traffic (goal: ≤ 1 %, i.e.
  no alarm in ≥ 99 % of windows, with ``false_alarm_rate: 0.01``);
- the detection delay (requests from the onset of the shift to the first alarm) when one
  feature is shifted by 0.25, 0.5 and 1.0 of its training standard deviation, over every
  feature (or ``--features``) and several random orders (goal at 0.5 sd: within 500).

Images (zoo ``efficientnet-lite0``): scikit-image's bundled photos, augmented by random crops
and flips, as the reference; traffic is other crops/flips of the same photos (clean), the
same darkened (× 0.5) and blurred (Gaussian, σ = 3 px). Reported: the embedding MMD's
p-value per window, and the brightness/contrast tests beside it.

    python bench/drift_bench.py                 # the measurement (minutes)
    python bench/drift_bench.py --quick         # seconds: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from forwardpass.monitor.drift import DriftDetector
from forwardpass.monitor.profile import Profile
from forwardpass.monitor.reference import build_reference, load_reference, profile_data
from forwardpass.monitor.settings import DriftSettings

SHIFTS = (0.25, 0.5, 1.0)
_DEFAULTS = DriftSettings()


def _ensure(repository: Path, name: str) -> Path:
    from forwardpass.zoo import add

    folder = repository / name
    if not folder.is_dir():
        add(name, repository)
    return folder


def _finite(x: float) -> float | None:
    """None for 'not detected within the horizon' (JSON has no infinity)."""
    return x if np.isfinite(x) else None


def _slice(profile: Profile, index: np.ndarray) -> Profile:
    return Profile(
        {k: v[index] for k, v in profile.features.items()},
        None if profile.embedding is None else profile.embedding[index],
    )


def _concat(parts: list[Profile]) -> Profile:
    keys = parts[0].features
    return Profile(
        {k: np.concatenate([p.features[k] for p in parts]) for k in keys},
        None if parts[0].embedding is None else np.concatenate([p.embedding for p in parts]),  # type: ignore[misc]
    )


def _stream(n_rows: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices: fresh random orders of all rows, back to back."""
    parts = [rng.permutation(n_rows) for _ in range(length // n_rows + 1)]
    return np.concatenate(parts)[:length]


def tabular(repository: Path, settings: DriftSettings, quick: bool, features: list[str]) -> dict:
    from sklearn.model_selection import train_test_split

    from forwardpass.zoo.breast_cancer import SEED, TEST_FRACTION, dataset

    folder = _ensure(repository, "breast-cancer")
    x, y, names = dataset()
    x_train, x_test, _, _ = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    np.savez(work / "train.npz", input=x_train.astype(np.float32))
    build_reference(repository, "breast-cancer", work / "train.npz")
    from forwardpass.repository import ModelRepository

    config = ModelRepository(repository).read("breast-cancer").config
    reference = load_reference(folder, config)
    sd = x_train.std(axis=0)
    chosen = features or (names[:4] if quick else names)
    # One pass through the model: the clean held-out rows, then each shifted variant.
    variants = [x_test]
    keys: list[tuple[str, float]] = []
    for feature in chosen:
        j = names.index(feature)
        for s in SHIFTS:
            shifted = x_test.copy()
            shifted[:, j] += s * sd[j]
            variants.append(shifted)
            keys.append((feature, s))
    np.savez(work / "traffic.npz", input=np.concatenate(variants).astype(np.float32))
    began = time.perf_counter()
    profile, profiler, *_ = asyncio.run(
        profile_data(repository, "breast-cancer", work / "traffic.npz")
    )
    run_s = time.perf_counter() - began
    columns = [c.name for c in profiler.columns]
    n = len(x_test)
    clean = _slice(profile, np.arange(n))
    rng = np.random.default_rng(0)

    # False alarms: long clean streams.
    length = 1200 if quick else 20_000
    trials = 2 if quick else 10
    windows = alarms = 0
    for _ in range(trials):
        detector = DriftDetector(reference, settings, columns)
        results = detector.add(_slice(clean, _stream(n, length, rng)))
        windows += len(results)
        alarms += sum(r.alarm for r in results)

    # Detection delay: a full clean window, then shifted rows.
    horizon = 1000
    repeats = 2 if quick else 10
    delays: dict[float, list[float]] = {s: [] for s in SHIFTS}
    per_feature: dict[str, dict[str, Any]] = {}
    for i, (feature, s) in enumerate(keys):
        shifted = _slice(profile, np.arange(n * (i + 1), n * (i + 2)))
        found: list[float] = []
        for _ in range(repeats):
            detector = DriftDetector(reference, settings, columns)
            detector.add(_slice(clean, _stream(n, settings.window, rng)))
            onset = detector.seen
            results = detector.add(_slice(shifted, _stream(n, horizon, rng)))
            hit = next((r.end - onset for r in results if r.alarm), float("inf"))
            found.append(hit)
        delays[s].extend(found)
        per_feature.setdefault(feature, {})[str(s)] = _finite(float(np.median(found)))
    summary = {}
    for s, values in delays.items():
        v = np.array(values)
        summary[str(s)] = {
            "median_delay": _finite(float(np.median(v))),
            "p90_delay": _finite(float(np.quantile(v, 0.9))),
            "detected_within_500": float(np.mean(v <= 500)),
            "never_within_1000": float(np.mean(~np.isfinite(v))),
        }
    return {
        "model": "breast-cancer",
        "reference_rows": reference.rows,
        "heldout_rows": n,
        "tests_per_window": len(columns),
        "model_pass_s": round(run_s, 2),
        "clean_windows": windows,
        "clean_alarm_rate": alarms / max(windows, 1),
        "delay_by_shift_sd": summary,
        "median_delay_by_feature": per_feature,
    }


def _photos() -> list[np.ndarray]:
    import skimage.data as data

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")
    return [np.asarray(getattr(data, n)())[..., :3] for n in names]


def _augment(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    scale = rng.uniform(0.6, 0.9)
    ch, cw = int(h * scale), int(w * scale)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = photo[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _write(folder: Path, images: list[np.ndarray]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        (folder / f"{i:05d}.png").write_bytes(buffer.getvalue())
    return folder


def _darken(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) * 0.5).astype(np.uint8)


def _blur(image: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))


def images(repository: Path, settings: DriftSettings, quick: bool) -> dict:
    folder = _ensure(repository, "efficientnet-lite0")
    del folder
    rng = np.random.default_rng(1)
    photos = _photos()
    n_ref, n_win = (36, 24) if quick else (300, 100)
    work = Path(tempfile.mkdtemp(prefix="drift-bench-img-"))
    reference_images = [_augment(photos[i % len(photos)], rng) for i in range(n_ref)]
    build_reference(repository, "efficientnet-lite0", _write(work / "reference", reference_images))
    from forwardpass.repository import ModelRepository

    config = ModelRepository(repository).read("efficientnet-lite0").config
    reference = load_reference(repository / "efficientnet-lite0", config)
    clean = [_augment(photos[i % len(photos)], rng) for i in range(n_win)]
    traffic = clean + [_darken(im) for im in clean] + [_blur(im) for im in clean]
    profile, profiler, *_ = asyncio.run(
        profile_data(repository, "efficientnet-lite0", _write(work / "traffic", traffic))
    )
    columns = [c.name for c in profiler.columns]
    window = DriftSettings(
        **{**settings.to_dict(), "window": n_win, "step": n_win, "features": None}
    )
    out: dict[str, Any] = {"model": "efficientnet-lite0", "reference_images": n_ref}
    for k, name in enumerate(("clean", "darkened", "blurred")):
        detector = DriftDetector(reference, window, columns)
        (result,) = detector.add(_slice(profile, np.arange(k * n_win, (k + 1) * n_win)))
        by = {f.feature: f for f in result.features}
        out[name] = {
            "alarm": result.alarm,
            "mmd": by["embedding"].statistic,
            "mmd_p_value": by["embedding"].p_value,
            "mmd_drift": by["embedding"].drift,
            "brightness_p_value": by["image.brightness"].p_value,
            "contrast_p_value": by["image.contrast"].p_value,
            "drifted": [f.feature for f in result.features if f.drift],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=None, help="zoo models (default: temp)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: proves it runs")
    parser.add_argument("--window", type=int, default=_DEFAULTS.window)
    parser.add_argument("--step", type=int, default=_DEFAULTS.step)
    parser.add_argument("--false-alarm-rate", type=float, default=_DEFAULTS.false_alarm_rate)
    parser.add_argument("--correction", default=_DEFAULTS.correction)
    parser.add_argument("--numeric-test", default=_DEFAULTS.numeric_test)
    parser.add_argument("--features", default="", help="comma-separated features to shift")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    repository = args.repository or Path(tempfile.mkdtemp(prefix="drift-bench-zoo-"))
    settings = DriftSettings(
        window=args.window,
        step=args.step,
        false_alarm_rate=args.false_alarm_rate,
        correction=args.correction,
        numeric_test=args.numeric_test,
    )
    features = [f for f in args.features.split(",") if f]
    results: dict[str, Any] = {"settings": settings.to_dict()}
    results["tabular"] = tabular(repository, settings, args.quick, features)
    if not args.skip_images:
        results["images"] = images(repository, settings, args.quick)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
