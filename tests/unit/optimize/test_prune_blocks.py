"""Pruning inverted-residual networks: computed padding folded, expansions only, re-fit, photos."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from forwardpass.errors import InvalidArgument, Unsupported
from forwardpass.optimize.feedforward import count_flops, fold_shapes, unsupported_ops
from forwardpass.optimize.photos import available_photos, photo_views, split_photos
from forwardpass.optimize.pruning import (
    PruneOptions,
    _search,
    channel_groups,
    prune_structured,
    reconstruct,
    run_onnx,
)
from forwardpass.optimize.training import FitSettings

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF-style "same" padding computed from the input's size (as EfficientNet's port does)."""
    h, w = x.shape[-2:]
    ph = max((-(-h // stride) - 1) * stride + kernel - h, 0)
    pw = max((-(-w // stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class Block(nn.Module):
    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        wide = channels * expand
        self.expand = nn.Conv2d(channels, wide, 1)
        self.depthwise = nn.Conv2d(wide, wide, 3, groups=wide)
        self.project = nn.Conv2d(wide, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.expand(x))
        y = F.relu6(self.depthwise(same_pad(y, 3, 1)))
        return x + self.project(y)


class TinyNet(nn.Module):
    """Stem (3×3, stride 2) → two inverted-residual blocks → 1×1 head → pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.blocks = nn.Sequential(Block(8, 4), Block(8, 4))
        self.head = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(same_pad(x, 3, 2)))
        x = F.relu6(self.head(self.blocks(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    from forwardpass.importers.torch import quiet_export

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    quiet_export(
        torch,
        TinyNet().eval(),
        (torch.zeros(2, 3, 32, 32),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return onnx.load(str(path))


def views(count: int, seed: int = 0) -> np.ndarray:
    return photo_views(count, size=32, seed=seed)


def test_computed_padding_is_folded_and_counted(tiny: onnx.ModelProto) -> None:
    assert "Shape" in unsupported_ops(tiny)
    folded = fold_shapes(tiny)
    assert unsupported_ops(folded) == []
    # Stem 8·27·16², blocks 2·(32·8 + 32·9 + 8·32)·16², head 16·8·16², fc 16·5.
    macs = 8 * 27 * 256 + 2 * (256 + 288 + 256) * 256 + 128 * 256 + 80
    assert count_flops(tiny).macs == macs  # counted through the folded graph
    from forwardpass.optimize.torch_graph import convert, verify

    x = views(4)
    assert verify(tiny, convert(tiny), {"input": x}) <= 1e-4  # any batch, not just 1


def test_expansion_layers_only_lose_channels(tiny: onnx.ModelProto, tmp_path: Path) -> None:
    x = views(32)
    options = PruneOptions(
        flops_reduction=0.3,
        score="activation",
        fit=FitSettings(epochs=1, max_steps=2, batch_size=8),
        channel_multiple=1,
        layers="expansion",
        reconstruct_samples=16,
    )
    result = prune_structured(tiny, tmp_path / "pruned.onnx", x, None, options)
    assert result.reduction >= 0.3
    assert len(result.channels) == 2 and all("expand" in k for k in result.channels)
    assert all(after < before for before, after in result.channels.values())
    why = {k.split("/")[1]: v for k, v in result.kept_whole.items() if "/" in k}
    assert "not an expansion" in why["head"]  # prunable, but not an expansion
    assert "skip connection" in why["stem"]
    assert result.reconstructed == 2  # both projections re-fitted
    out = run_onnx(tmp_path / "pruned.onnx", views(5, seed=3))  # dynamic batch kept
    assert out.shape == (5, 5)


def _cut_expansions(module: Any, ratio: float) -> tuple[list[Any], Any]:
    """The expansion groups of a converted (shape-recorded) network, and a copy with each cut
    by ``ratio``, keeping its first channels."""
    groups, _ = channel_groups(module)
    expansions = [g for g in groups if "expand" in g.tensor]
    order = {g.producer: torch.arange(g.channels) for g in expansions}
    pruned, _ = _search(module, expansions, order, ratio)
    return expansions, pruned


def test_least_squares_refit_brings_the_pruned_net_closer(tiny: onnx.ModelProto) -> None:
    from forwardpass.optimize.torch_graph import convert

    module = convert(tiny)
    x = torch.from_numpy(views(48))
    module.record_shapes(x[:1])
    expansions, pruned = _cut_expansions(module, 0.3)
    held = torch.from_numpy(views(16, seed=9))
    with torch.no_grad():
        reference = module(held)
        before = float(((pruned(held) - reference) ** 2).mean())
        assert reconstruct(module, pruned, expansions, x[:32]) == 2
        after = float(((pruned(held) - reference) ** 2).mean())
    assert after < before / 2


def test_photo_views_are_seeded_normalised_and_split() -> None:
    names = available_photos()
    assert {"chelsea", "coffee", "astronaut"} <= set(names)
    a, b = photo_views(6, size=40, seed=1), photo_views(6, size=40, seed=1)
    assert a.shape == (6, 3, 40, 40) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, photo_views(6, size=40, seed=2))
    assert a.min() >= -127 / 128 - 1e-6 and a.max() <= 128 / 128 + 1e-6
    train, held = split_photos()
    assert held and not set(train) & set(held) and set(train) | set(held) == set(names)
    with pytest.raises(InvalidArgument, match="no photo"):
        photo_views(2, photos=["unicorn"])
    with pytest.raises(InvalidArgument, match="count"):
        photo_views(0)
    with pytest.raises(InvalidArgument, match="every"):
        split_photos(1)


def test_prune_method_accepts_computed_padding_and_offers_expansions(
    tiny: onnx.ModelProto, tmp_path: Path
) -> None:
    from forwardpass.optimize.methods import BuildContext
    from forwardpass.optimize.methods.prune import PruneMethod
    from forwardpass.optimize.target import Target

    onnx.save(tiny, str(tmp_path / "model.onnx"))
    config = type("Config", (), {"inputs": [object()], "outputs": [object()]})()
    ctx = BuildContext(tmp_path / "model.onnx", config, Target.CPU, None, tmp_path)  # type: ignore[arg-type]
    method = PruneMethod()
    assert method.check(ctx) is None  # Shape/Slice/Pad chains fold away
    names = [v.name for v in method.variants(ctx)]
    assert "prune-expansion-40" in names
    assert {"prune-latency-130", "prune-latency-130-int8"} <= set(names)


@pytest.fixture(scope="module")
def converted(tiny: onnx.ModelProto):  # type: ignore[no-untyped-def]
    from forwardpass.optimize.torch_graph import convert

    module = convert(tiny)
    module.record_shapes(torch.from_numpy(views(1)))
    module.logits = True
    groups, _ = channel_groups(module)
    return module, groups


def test_kernel_times_are_credited_to_layers_and_scale_with_the_plan(
    tiny: onnx.ModelProto,
    converted,  # type: ignore[no-untyped-def]
) -> None:
    from forwardpass.optimize.allocation import layer_times, predicted_time
    from forwardpass.optimize.torch_graph import Dense

    module, groups = converted
    times = layer_times(tiny, module)
    dense = {k for k, layer in module.layers.items() if isinstance(layer, Dense)}
    assert set(times.layers) == dense  # every Conv/Gemm (activations fused in) and only them
    assert all(t > 0 for t in times.layers.values()) and times.other >= 0
    whole = {g.producer: g.channels for g in groups}
    assert predicted_time(times, groups, whole) == pytest.approx(times.total)
    head = next(g for g in groups if "head" in g.tensor)
    half = {**whole, head.producer: head.channels // 2}
    saved = times.total - predicted_time(times, groups, half)
    fc = next(k for k, _ in head.consumers)
    # The head conv and the dense layer it feeds each run at half their channels.
    assert saved == pytest.approx((times.layers[head.producer] + times.layers[fc]) / 2)


def test_sensitivity_is_judged_on_other_views_than_the_refit(converted) -> None:  # type: ignore[no-untyped-def]
    from forwardpass.optimize.allocation import group_sensitivity

    module, groups = converted
    order = {g.producer: torch.arange(g.channels) for g in groups}
    fit, judge = torch.from_numpy(views(24)), torch.from_numpy(views(24, seed=5))
    found = group_sensitivity(module, groups, order, fit, judge, multiple=1)
    assert set(found) == {g.producer for g in groups}
    for curve in found.values():
        assert [p[0] for p in curve.points] == [0.25, 0.5, 0.75]
        assert all(p[2] >= 0 and 0 <= p[3] <= 1 for p in curve.points)
        kept = [p[1] for p in curve.points]
        assert kept == sorted(kept, reverse=True) and kept[-1] < curve.channels
        assert curve.kl(0) == 0 and curve.kl(0.5) == pytest.approx(curve.points[1][2])
    # Fitted on the views it is judged on, the 16-input dense layer reproduces the head on
    # them almost exactly; judged on other views, the cut costs something.
    head = next(g for g in groups if "head" in g.tensor).producer
    same = group_sensitivity(module, groups, order, fit, fit, multiple=1)[head]
    assert found[head].points[-1][2] > same.points[-1][2]


def test_allocation_reaches_the_predicted_speedup_or_says_how_far_it_gets(
    tiny: onnx.ModelProto,
    tmp_path: Path,
) -> None:
    import re

    x = views(48)
    options = PruneOptions(
        score="activation",
        fit=FitSettings(epochs=1, max_steps=2, batch_size=8),
        channel_multiple=1,
        reconstruct_samples=24,
        speedup=50.0,
        sensitivity_samples=32,
    )
    with pytest.raises(Unsupported, match=r"at most .*× faster") as caught:
        prune_structured(tiny, tmp_path / "too-far.onnx", x, None, options)
    assert not (tmp_path / "too-far.onnx").exists()
    # On a 32×32 toy, ONNX Runtime's per-node costs (pads, adds, pooling) dominate: ask for
    # half of the most the prunable layers can give.
    most = float(re.search(r"at most ([0-9.]+)×", str(caught.value)).group(1))  # type: ignore[union-attr]
    assert most > 1.0
    wanted = 1 + (most - 1) / 2
    result = prune_structured(
        tiny, tmp_path / "pruned.onnx", x, None, replace(options, speedup=wanted)
    )
    assert result.predicted_speedup >= wanted
    assert any("allocated by sensitivity" in note for note in result.notes())
    assert any(after < before for before, after in result.channels.values())
    assert run_onnx(tmp_path / "pruned.onnx", views(3, seed=4)).shape == (3, 5)


def test_photo_views_mix_photos_of_the_same_set() -> None:
    assert "motorcycle" in available_photos()  # a stereo pair's left view joins the photos
    plain = photo_views(8, size=32, photos=["chelsea", "coffee"], seed=3)
    mixed = photo_views(8, size=32, photos=["chelsea", "coffee"], seed=3, mix=1.0)
    assert mixed.shape == plain.shape and not np.array_equal(mixed, plain)
    assert np.array_equal(
        mixed, photo_views(8, size=32, photos=["chelsea", "coffee"], seed=3, mix=1.0)
    )
    assert np.array_equal(photo_views(8, size=32, seed=3), photo_views(8, size=32, seed=3, mix=0))
    with pytest.raises(InvalidArgument, match="mix"):
        photo_views(2, mix=1.5)


def test_prune_latency_variant_chains_with_int8(
    tiny: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from forwardpass.optimize.data import Samples
    from forwardpass.optimize.methods import BuildContext
    from forwardpass.optimize.methods import prune as prune_method
    from forwardpass.optimize.target import Target

    # The toy's prunable layers are a sliver of its ONNX Runtime time (see above): ask for
    # a speed-up it can give, through the variant's own options.
    monkeypatch.setattr(prune_method, "_SPEEDUP", 1.002)
    monkeypatch.setattr(prune_method, "_SENSITIVITY_VIEWS", 16)
    monkeypatch.setattr(prune_method, "_RECONSTRUCT_VIEWS", 16)
    monkeypatch.setattr(prune_method, "_BLOCK_STEPS", 10)
    onnx.save(tiny, str(tmp_path / "model.onnx"))
    config = SimpleNamespace(
        inputs=[SimpleNamespace(name="input")], outputs=[object()], batching=True
    )
    calibration = Samples({"input": views(32)}, "photos")
    ctx = BuildContext(tmp_path / "model.onnx", config, Target.CPU, calibration, tmp_path)  # type: ignore[arg-type]
    method = prune_method.PruneMethod()
    variant = next(v for v in method.variants(ctx) if v.name == "prune-latency-130-int8")
    folder = tmp_path / variant.name
    folder.mkdir()
    notes = method.build(ctx, variant, folder / "model.onnx")
    assert any("allocated by sensitivity" in n for n in notes)
    assert any("blocks trained to the original's block outputs" in n for n in notes)
    assert any("judged on validation views" in n for n in notes)  # 4 of the 32 held aside
    assert any("static INT8" in n for n in notes) and any("calibrated on 32" in n for n in notes)
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    pruned = onnx.load(str(folder / "pruned.onnx"))
    assert count_flops(pruned).flops < count_flops(tiny).flops  # the INT8 model is the pruned one
    assert run_onnx(folder / "model.onnx", views(2, seed=8)).shape == (2, 5)


def test_uneven_pads_of_the_export_fold_into_the_convolutions(
    tiny: onnx.ModelProto, tmp_path: Path
) -> None:
    from forwardpass.optimize.padfold import fold_pads
    from forwardpass.optimize.torch_graph import convert, export

    module = convert(tiny)
    x = views(4)
    module.record_shapes(torch.from_numpy(x[:1]))
    path = tmp_path / "reexported.onnx"
    export(module, path, [x[:2]], ["input"], ["logits"])
    before = run_onnx(path, x)
    pads = sum(n.op_type == "Pad" for n in onnx.load(str(path)).graph.node)
    assert pads >= 1  # torch writes the stem's uneven "same" pad as a Pad node
    assert fold_pads(path) == pads
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Pad" not in ops and "Conv" in ops
    assert np.allclose(run_onnx(path, x), before, atol=1e-5)
    assert fold_pads(path) == 0  # nothing left to fold; the file is left as it is


def test_more_photos_are_real_images_held_out_whole() -> None:
    from forwardpass.optimize.photos import _photos

    every = _photos()
    names = set(available_photos())
    faces = {f"lfw-faces-{k}" for k in range(1, 5)}
    assert faces | {"microaneurysms", "lfw-backgrounds-1"} <= names
    assert len(every["motorcycle"]) == 2  # both views of the stereo pair: one scene, one photo
    assert sum(len(every[n]) for n in faces) == 100
    for name, images in every.items():
        for image in images:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
            grey = image.astype(np.float64).mean(axis=2)
            assert grey.std() > 5, name  # not a blank
            # Natural images are smooth: a pixel predicts its right-hand neighbour well.
            left, right = grey[:, :-1].ravel(), grey[:, 1:].ravel()
            assert np.corrcoef(left, right)[0, 1] > 0.5, name
    crops = [image.tobytes() for n in faces for image in every[n]]
    assert len(set(crops)) == len(crops)  # distinct faces, not one repeated
    train, held = split_photos()
    assert faces & set(train) and faces & set(held)  # some faces judged on, never trained on
    face_views = photo_views(4, size=32, photos=["lfw-faces-1"], seed=0)
    assert face_views.shape == (4, 3, 32, 32) and len({v.tobytes() for v in face_views}) == 4


def test_blocks_are_cut_where_one_activation_of_one_shape_lives(tiny: onnx.ModelProto) -> None:
    from forwardpass.optimize.blocks import run_segment, segments
    from forwardpass.optimize.torch_graph import convert

    module = convert(tiny)
    x = torch.from_numpy(views(4))
    module.record_shapes(x[:1])
    found = segments(module)
    assert found[0].start == 0 and found[-1].stop == len(module.steps)
    assert all(a.stop == b.start and a.output == b.input for a, b in itertools.pairwise(found))
    adds = [s.output for s in module.steps if s.op == "Add" and len(s.inputs) == 2]
    assert len(adds) == 2 and set(adds) <= {s.output for s in found}  # each block's output
    with torch.no_grad():  # the blocks, chained, are the network
        y = x
        for segment in found:
            y = run_segment(module, segment, y)
        assert torch.allclose(y, module(x), atol=1e-5)
    _, pruned = _cut_expansions(module, 0.3)
    pruned.record_shapes(x[:1])
    cut = segments(module, pruned)  # inside a block the widths differ: no cut there
    assert {s.output for s in cut} >= set(adds) and len(cut) <= len(found)


def test_block_wise_reconstruction_lowers_each_blocks_error(tiny: onnx.ModelProto) -> None:
    from forwardpass.optimize.blocks import BlockSettings, reconstruct_blocks
    from forwardpass.optimize.torch_graph import convert

    module = convert(tiny)
    x = torch.from_numpy(views(64))
    module.record_shapes(x[:1])
    _, pruned = _cut_expansions(module, 0.4)
    held = torch.from_numpy(views(16, seed=9))
    with torch.no_grad():
        reference = module(held)
        before = float(((pruned(held) - reference) ** 2).mean())
    settings = BlockSettings(steps=60, batch_size=8, learning_rate=3e-3)
    fits = reconstruct_blocks(module, pruned, x, settings)
    assert len(fits) == 2  # the two pruned blocks; the stem and head are untouched
    assert all(f.kept and f.error_after < f.error_before for f in fits)
    with torch.no_grad():  # and on views of other seeds, the network's outputs too
        after = float(((pruned(held) - reference) ** 2).mean())
    assert after < before
    with pytest.raises(InvalidArgument, match="at least 2 views"):
        reconstruct_blocks(module, pruned, x[:1], settings)


def test_fine_tune_stops_where_it_agreed_best_on_validation_views() -> None:
    from forwardpass.optimize.training import fit

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    with torch.no_grad():
        teacher = student(torch.from_numpy(x)).numpy()
    start = copy.deepcopy(student.state_dict())
    # Trained towards the wrong answers (the teacher's logits reversed), judged on the right
    # ones: the student only gets worse, so it must end as it started.
    wrong = teacher[:, ::-1].copy()
    settings = FitSettings(epochs=20, batch_size=16, learning_rate=1e-2, validate_every=5)
    history: list[tuple[int, float, float]] = []
    losses = fit(
        student, [x], wrong, "logits", settings, validation=([x], teacher), history=history
    )
    assert len(losses) == 20 and history[0][:2] == (0, 1.0)  # all agree at the start
    assert [h[0] for h in history] == list(range(0, 81, 5))
    assert min(h[1] for h in history) < 0.5  # it did drift
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())
    # Trained towards the right answers from a perturbed start, it keeps a later, better step.
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    history.clear()
    fit(student, [x], teacher, "logits", settings, validation=([x], teacher), history=history)
    best = max(history, key=lambda h: (h[1], -h[2]))
    assert best[0] > 0 and best[1] > history[0][1]
