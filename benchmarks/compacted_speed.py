"""Real speed-up of a compacted network over its dense original, per backend, against its MACs ratio.

For vgg19 and resnet56 (CIFAR-10 shape, random weights: latency does not depend on the values) this
removes ``--amount`` of the channels of every coupled group (:func:`prunelab.channels.prune_channels`,
L1 filter criterion, ``scope="layer"`` by default so that "50 % channels removed" holds in every layer),
then times the dense and the compacted model side by side on one thread, at batch 1 and 64, on eight
backends:

* ``eager``: the PyTorch modules as they are;
* ``eager_folded``: eager, BatchNorm folded into the convolutions (:func:`prunelab.export.fold_batchnorm`);
* ``eager_folded_cl``: the same, in the channels-last memory layout (weights and input): PyTorch's CPU
  convolutions (oneDNN) then run their NHWC kernels, which keep narrow layers' channel vectors together;
* ``onnxruntime``: the folded model exported to ONNX (:func:`prunelab.metrics.speed.onnx_session`, the
  export of :func:`prunelab.metrics.speed.onnx_bytes`), ONNX Runtime CPU provider, graph optimisations at
  ``ORT_ENABLE_ALL`` (which fuses Conv+ReLU and Conv+Add+ReLU into one kernel), one intra-op thread;
* ``onnxruntime_selection``: the same, exported with ``export_forms=False``: resnet56's option-A shortcuts
  as the index selection they are in PyTorch (Slice/Gather/Mul, which ONNX Runtime's blocked layout does
  not cover) instead of their fixed 1×1 convolution form (``PadShortcut.export_form``); vgg19 has no such
  layer, so there the two ONNX backends run the same file;
* ``openvino``: the file of ``onnxruntime`` run by OpenVINO's CPU plugin (a second engine, to tell an ONNX
  Runtime limit from a limit of the narrow layers themselves): input shape fixed per batch size, float32
  inference precision (on a CPU with bfloat16 support the plugin would otherwise choose bfloat16), one
  inference thread, one stream, the latency hint. Optional: ``pip install openvino``; without it the
  backend is left out and the record says so;
* ``mnn``: the same file converted by MNN's ``mnnconvert`` and run by MNN's CPU backend (a third engine,
  with its own kernels and packed channel layout), float32 (``precision: high``), one
  thread. Optional: ``pip install mnn``; without it the backend is left out and the record says so;
* ``compile``: ``torch.compile`` (inductor, ``freezing=True`` so weights are constants: prepacked
  oneDNN convolutions, fused pointwise epilogues) of the folded model, one compile per batch size,
  dropped with its reason when the first compile exceeds ``--compile-budget`` seconds.

Every timed function of one (model, batch) cell runs in the same interleaved rounds
(:func:`prunelab.metrics.latency.interleaved_times`: dense, compact, dense, compact, ... for every
backend in turn), so a load spike on the shared machine hits all of them; medians are compared. The
speed-up is ``dense_ms / compact_ms``; the target of issue 15 is ``speed-up >= 0.9 x MACs ratio`` at batch
64 and ``>= 0.75 x`` at batch 1.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compacted_speed.py                 # both models, ~8 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compacted_speed.py --models resnet56 --repeats 5

With ``--data-dir DIR`` each model's registered CIFAR-10 weights (``resnet56_cifar10``, ...) are pruned
instead of random ones: the same latency per layer width, but the widths a global ranking leaves are those
of a trained network.

Output: ``benchmarks/results/compacted_speed.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_timed  # benchmarks/_machine.py, beside this script

from prunelab._io import atomic_write_json
from prunelab.channels import prune_channels
from prunelab.core.inputs import accepted_diff, max_abs_diff
from prunelab.core.modules import copy_model
from prunelab.export import fold_batchnorm
from prunelab.metrics.latency import interleaved_times, machine
from prunelab.metrics.speed import (
    ONNX_TOLERANCE,
    onnx_bytes,
    onnx_runtime_session,
    onnx_session,
    with_export_forms,
)
from prunelab.models import build_model
from prunelab.models.pretrained import build_pretrained

RESULTS = Path(__file__).resolve().parent / "results" / "compacted_speed.json"
ENGINES = (
    ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime_selection")),
    ("openvino", "openvino", ("openvino",)),
    ("mnn", "MNN", ("mnn",)),
)
"""The optional engines: (pip package, module, the backends that need it); a missing one drops its backends."""
SHAPE = (3, 32, 32)
TARGET = {1: 0.75, 64: 0.9}
"""Issue 15's target: measured speed-up >= this share of the MACs ratio, per batch size."""


def build_pair(
    name: str, amount: float, scope: str, data_dir: str | None = None
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The dense zoo model and its compacted copy, both in eval mode.

    The weights are seeded random ones, or with ``data_dir`` the registered CIFAR-10 weights of ``name``
    (``<name>_cifar10``) from ``data_dir/weights``: latency does not depend on the values, but which
    channels the criterion removes (with ``scope="global"``: how many per layer) does.
    """
    torch.manual_seed(0)
    if data_dir is None:
        dense = build_model(name, num_classes=10, input_shape=SHAPE).eval()
    else:
        dense = build_pretrained(f"{name}_cifar10", data_dir=data_dir).eval()
    small, report = prune_channels(dense, SHAPE, amount, criterion="l1_filter", scope=scope)
    small.eval()
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    info = {
        "macs_dense": report.macs_before,
        "macs_compact": report.macs_after,
        "macs_ratio": report.macs_before / report.macs_after,
        "params_dense": report.params_before,
        "params_compact": report.params_after,
        "channels_before": report.channels_before,
        "channels_after": report.channels_after,
        "conv_widths_compact": widths,
        "max_abs_diff_surgery": report.surgery.max_abs_diff,
    }
    return dense, small, info


def _compiled(model: nn.Module, x: torch.Tensor) -> tuple[Callable[[], object], float]:
    """``torch.compile`` of ``model`` for inputs like ``x`` (frozen weights) and its compile seconds."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    fn = torch.compile(model, dynamic=False)
    start = time.perf_counter()
    with torch.no_grad():
        fn(x)
    return (lambda: fn(x)), time.perf_counter() - start


def prepare(dense: nn.Module, small: nn.Module, backends: list[str]) -> dict[str, Any]:
    """The BatchNorm-folded copies and, with ONNX Runtime, one session per folded model."""
    x1 = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(1))
    folded = [fold_batchnorm(m, x1)[0] for m in (dense, small)]
    out: dict[str, Any] = {"folded": folded, "sessions": [], "onnx_export": {}}
    if "eager_folded_cl" in backends:
        out["folded_cl"] = [copy_model(m).to(memory_format=torch.channels_last) for m in folded]
    if "onnxruntime" in backends:
        with tempfile.TemporaryDirectory(prefix="compacted-speed-") as tmp:
            built = [onnx_session(m, x1, tmp) for m in folded]
        out["sessions"] = [s for s, _ in built]
        level = out["sessions"][0].get_session_options().graph_optimization_level
        out["onnx_export"] = {"dense": built[0][1], "compact": built[1][1], "graph_optimization": str(level)}
    if "onnxruntime_selection" in backends:
        out["sessions_selection"] = [_selection_session(m, x1) for m in folded]
    if "openvino" in backends or "mnn" in backends:
        out["onnx_files"] = [onnx_bytes(m, (x1,), exporter="torchscript", input_names=["x"]) for m in folded]
    if "mnn" in backends:
        out["mnn"] = [_mnn_convert(data) for data in out["onnx_files"]]
    return out


def _mnn_convert(data: bytes) -> bytes:
    """The ONNX ``data`` converted to an MNN model by the ``mnnconvert`` tool of the ``mnn`` package."""
    tool = Path(sys.executable).with_name("mnnconvert")
    with tempfile.TemporaryDirectory(prefix="compacted-speed-mnn-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "model.mnn"
        src.write_bytes(data)
        done = subprocess.run(
            [
                str(tool),
                "-f",
                "ONNX",
                "--modelFile",
                str(src),
                "--MNNModel",
                str(dst),
                "--bizCode",
                "prunelab",
            ],
            check=False,  # the failure is raised below with the tool's message
            capture_output=True,
            text=True,
        )
        if done.returncode or not dst.exists():
            raise RuntimeError(f"mnnconvert failed: {(done.stdout + done.stderr).strip()[-300:]}")
        return dst.read_bytes()


def _mnn_call(data: bytes, model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One MNN CPU inference of the MNN model ``data`` on ``x`` (float32, one thread), checked against
    ``model`` like the other engines."""
    import MNN

    runtime = MNN.nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": 1},))
    with tempfile.TemporaryDirectory(prefix="compacted-speed-mnn-") as tmp:
        path = Path(tmp) / "model.mnn"
        path.write_bytes(data)
        net = MNN.nn.load_module_from_file(str(path), ["x"], [], runtime_manager=runtime)
    feed = [MNN.expr.const(x.numpy().copy(), list(x.shape), MNN.expr.NCHW)]

    def call() -> np.ndarray:
        return np.asarray(net.forward(feed)[0].read())

    _check_engine("MNN", model, x, call().reshape(x.shape[0], -1))
    return call


def _openvino_call(data: bytes, model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One OpenVINO CPU inference of the ONNX ``data`` on ``x`` (shape fixed to ``x``'s), checked against
    ``model`` like the ONNX Runtime sessions are."""
    import openvino

    core = openvino.Core()
    with tempfile.TemporaryDirectory(prefix="compacted-speed-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        graph = core.read_model(str(path))
    graph.reshape({"x": list(x.shape)})
    config = {
        "INFERENCE_NUM_THREADS": 1,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled = core.compile_model(graph, "CPU", config)
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}
    output = compiled.output(0)
    _check_engine("OpenVINO", model, x, request.infer(feed)[output])
    return lambda: request.infer(feed)[output]


def _check_engine(engine: str, model: nn.Module, x: torch.Tensor, got: np.ndarray) -> None:
    """Raise unless ``got``, an engine's output on ``x``, is ``model``'s within the ONNX tolerance."""
    with torch.no_grad():
        want = model(x)
    diff, where = max_abs_diff([want], [torch.from_numpy(got)])
    if diff > accepted_diff(ONNX_TOLERANCE, [want]):
        raise RuntimeError(f"{engine}'s outputs differ from the model by {diff:.2e} ({where})")


def _selection_session(model: nn.Module, x: torch.Tensor) -> Any:
    """An ONNX Runtime session of ``model`` exported without export forms, checked like ``onnx_session``'s."""
    data = onnx_bytes(model, (x,), exporter="torchscript", input_names=["x"], export_forms=False)
    session = onnx_runtime_session(data)
    probe = torch.cat([x, -x])
    _check_engine("ONNX Runtime (no export forms)", model, probe, session.run(None, {"x": probe.numpy()})[0])
    return session


def measure(
    name: str,
    models: tuple[nn.Module, nn.Module],
    prepared: dict[str, Any],
    bs: int,
    backends: list[str],
    warmup: int,
    repeats: int,
    compile_budget: float,
    compile_state: dict[str, Any],
) -> dict[str, Any]:
    """Medians (ms) of dense and compact at batch ``bs`` for every backend, all timed interleaved."""
    x = torch.randn((bs, *SHAPE), generator=torch.Generator().manual_seed(bs))
    fns: dict[str, list[Callable[[], object]]] = {}
    if "eager" in backends:
        fns["eager"] = [lambda m=m: m(x) for m in models]
    if "eager_folded" in backends:
        fns["eager_folded"] = [lambda m=m: m(x) for m in prepared["folded"]]
    if "eager_folded_cl" in backends:
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fns["eager_folded_cl"] = [lambda m=m: m(x_cl) for m in prepared["folded_cl"]]
    if prepared["sessions"]:
        feed = {prepared["sessions"][0].get_inputs()[0].name: x.numpy()}
        fns["onnxruntime"] = [lambda s=s: s.run(None, feed) for s in prepared["sessions"]]
    if prepared.get("sessions_selection"):
        feed_x = {"x": x.numpy()}
        fns["onnxruntime_selection"] = [
            lambda s=s: s.run(None, feed_x) for s in prepared["sessions_selection"]
        ]
    if "openvino" in backends:
        fns["openvino"] = [
            _openvino_call(data, m, x)
            for data, m in zip(prepared["onnx_files"], prepared["folded"], strict=True)
        ]
    if "mnn" in backends:
        fns["mnn"] = [
            _mnn_call(data, m, x) for data, m in zip(prepared["mnn"], prepared["folded"], strict=True)
        ]
    compiled: dict[str, Any] = {}
    if "compile" in backends and not compile_state.get("skipped"):
        pair: list[tuple[Callable[[], object], float]] = []
        try:
            for m in prepared["folded"]:
                pair.append(_compiled(m, x))
                if pair[-1][1] > compile_budget:
                    compile_state["skipped"] = (
                        f"compiling {name} ({'dense' if len(pair) == 1 else 'compact'}) at batch {bs} took "
                        f"{pair[-1][1]:.0f} s > budget {compile_budget:.0f} s (inductor, 1 thread, loaded "
                        "machine); later compiles not attempted"
                    )
                    break
        except Exception as exc:  # noqa: BLE001 - any compile failure is recorded, not fatal
            compile_state["skipped"] = f"torch.compile failed: {str(exc).strip().splitlines()[0][:200]}"
        compile_state.setdefault("compile_s", []).append(
            {"model": name, "batch": bs, "seconds": [round(t, 1) for _, t in pair]}
        )
        if len(pair) == 2:
            compiled = {"compile_s_dense": pair[0][1], "compile_s_compact": pair[1][1]}
            fns["compile"] = [f for f, _ in pair]
    flat = [f for pair in fns.values() for f in pair]
    cpu: list[list[float]] = [[] for _ in flat]
    with torch.no_grad():
        times = interleaved_times([cpu_timed(f, cpu[k]) for k, f in enumerate(flat)], warmup, repeats)
    row: dict[str, Any] = {"repeats": repeats, "warmup": warmup}
    for k, backend in enumerate(fns):
        td, tc = times[2 * k], times[2 * k + 1]
        cd, cc = cpu[2 * k][warmup:], cpu[2 * k + 1][warmup:]
        d, c = statistics.median(td), statistics.median(tc)
        # On an oversubscribed machine a wall-clock pass longer than a scheduler slice also counts the
        # time other processes ran; the thread's CPU time does not (every backend computes on the calling
        # thread: one intra-op thread). Both are recorded; minima show the least-disturbed passes.
        row[backend] = {
            "dense_ms": d,
            "compact_ms": c,
            "speedup": d / c,
            "dense_p10_ms": float(np.percentile(td, 10)),
            "compact_p10_ms": float(np.percentile(tc, 10)),
            "dense_min_ms": min(td),
            "compact_min_ms": min(tc),
            "speedup_min": min(td) / min(tc),
            "dense_cpu_ms": statistics.median(cd),
            "compact_cpu_ms": statistics.median(cc),
            "speedup_cpu": statistics.median(cd) / statistics.median(cc),
        }
    if compiled:
        row["compile"].update(compiled)
    print(name, bs, json.dumps({b: round(v["speedup"], 3) for b, v in row.items() if isinstance(v, dict)}))
    return row


def ort_profile(dense: nn.Module, small: nn.Module, bs: int, runs: int) -> dict[str, Any]:
    """ONNX Runtime's own per-node kernel times (ms per pass) of the folded dense and compact models.

    Convolutions are grouped by their (dense, compact) output width, zipped in execution order with the
    models' ``Conv2d`` modules (both run their convolutions in module order; an option-A shortcut's
    convolution, its export form, may run before its block's convolutions, which have its width); the other
    node types are summed by type. This says which layers fall short of their MACs ratio.
    """
    import onnxruntime as ort

    x1 = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(1))
    x = torch.randn((bs, *SHAPE), generator=torch.Generator().manual_seed(bs)).numpy()
    per: dict[str, dict[str, Any]] = {}
    # The models as exported (export forms included: resnet56's shortcuts are convolutions in the file).
    dense, small = (with_export_forms(fold_batchnorm(m, x1)[0]) for m in (dense, small))
    with tempfile.TemporaryDirectory(prefix="compacted-profile-") as tmp:
        for tag, model in (("dense", dense), ("compact", small)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / tag)
            data = onnx_bytes(model, (x1,), exporter="torchscript", input_names=["x"])
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            session.run(None, {"x": x})  # a warm-up pass; it is profiled too, hence the runs + 1 below
            for _ in range(runs):
                session.run(None, {"x": x})
            events = json.loads(Path(session.end_profiling()).read_text())
            convs: dict[str, float] = {}
            others: dict[str, float] = {}
            for e in events:
                if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                    continue
                op, ms = e["args"]["op_name"], e["dur"] / 1000 / (runs + 1)
                # FusedConv: a convolution with its activation that ONNX Runtime left in plain NCHW (it
                # does so for some narrow layers); a convolution all the same.
                if op in ("Conv", "FusedConv"):
                    convs[e["name"]] = convs.get(e["name"], 0.0) + ms
                else:
                    others[op] = others.get(op, 0.0) + ms
            per[tag] = {"convs": list(convs.values()), "others": others}
    widths = [
        (a.out_channels, b.out_channels)
        for a, b in zip(
            [m for m in dense.modules() if isinstance(m, nn.Conv2d)],
            [m for m in small.modules() if isinstance(m, nn.Conv2d)],
            strict=True,
        )
    ]
    groups: dict[str, list[float]] = {}
    # Kernels in execution order, matched to the modules in definition order: the same order for these
    # sequential networks; a count that differs raises rather than pairing the wrong layers.
    for (wd, wc), td, tc in zip(widths, per["dense"]["convs"], per["compact"]["convs"], strict=True):
        g = groups.setdefault(f"{wd}->{wc}", [0.0, 0.0, 0])
        g[0] += td
        g[1] += tc
        g[2] += 1
    return {
        "conv_nodes": [len(per["dense"]["convs"]), len(per["compact"]["convs"])],
        "conv_by_width": {
            k: {"convs": n, "dense_ms": d, "compact_ms": c, "speedup": d / c}
            for k, (d, c, n) in groups.items()
        },
        "other_ops_dense_ms": per["dense"]["others"],
        "other_ops_compact_ms": per["compact"]["others"],
    }


def main() -> None:
    """Measure every model and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg19", "resnet56"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=[
            "eager",
            "eager_folded",
            "eager_folded_cl",
            "onnxruntime",
            "onnxruntime_selection",
            "openvino",
            "mnn",
            "compile",
        ],
    )
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--scope", default="layer", choices=["layer", "global"])
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds at batch 64 (x8 at batch 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-budget", type=float, default=90.0)
    parser.add_argument(
        "--data-dir",
        help="prune the registered CIFAR-10 weights of each model (<model>_cifar10) from DIR/weights "
        "instead of seeded random ones",
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: ONNX Runtime's per-layer profile, to results/compacted_speed_profile.json",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        profile: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "models": {},
        }
        profile["load_avg_before"] = list(os.getloadavg())
        for name in args.models:
            dense, small, info = build_pair(name, args.amount, args.scope, args.data_dir)
            profile["models"][name] = {"macs_ratio": info["macs_ratio"]}
            for bs in args.batches:
                runs = args.repeats * (8 if bs == 1 else 1)
                profile["models"][name][str(bs)] = cell = ort_profile(dense, small, bs, runs)
                print(
                    name,
                    bs,
                    json.dumps({k: round(v["speedup"], 2) for k, v in cell["conv_by_width"].items()}),
                )
        profile["load_avg_after"] = list(os.getloadavg())
        out = (
            Path(args.out).with_name("compacted_speed_profile.json") if args.out == str(RESULTS) else args.out
        )
        atomic_write_json(out, profile)
        print(f"wrote {out}")
        return
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            **machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_before": list(os.getloadavg()),
        },
        "threads": torch.get_num_threads(),
        # Set outside the script, and read by the engines: the thread count, and the instruction set that
        # oneDNN (PyTorch's and OpenVINO's convolutions) may use.
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
        "amount": args.amount,
        "scope": args.scope,
        "criterion": "l1_filter",
        "weights": (
            "random (seeded zoo initialisation); latency does not depend on weight values"
            if args.data_dir is None
            else f"pretrained CIFAR-10 weights <model>_cifar10 from {args.data_dir}/weights"
        ),
        "target": {str(k): v for k, v in TARGET.items()},
        "models": {},
    }
    for engine, module, backends in ENGINES:
        try:
            imported = importlib.import_module(module)
        except ImportError:
            if any(b in backends for b in args.backends):
                record["machine"][engine] = (
                    f"not installed ({', '.join(backends)} left out; pip install {engine})"
                )
            args.backends = [b for b in args.backends if b not in backends]
        else:
            version = getattr(imported, "__version__", None)
            record["machine"][engine] = version if version is not None else imported.version()
    compile_state: dict[str, Any] = {}
    start = time.perf_counter()
    for name in args.models:
        dense, small, info = build_pair(name, args.amount, args.scope, args.data_dir)
        prepared = prepare(dense, small, args.backends)
        cells: dict[str, Any] = {}
        for bs in args.batches:
            # Batch 1 passes are ~50x cheaper: more rounds for the same wall time, a steadier median.
            reps = args.repeats * (8 if bs == 1 else 1)
            row = measure(
                name, (dense, small), prepared, bs, args.backends, args.warmup, reps,
                args.compile_budget, compile_state,
            )  # fmt: skip
            for v in row.values():
                if isinstance(v, dict):
                    v["share_of_macs_ratio"] = v["speedup"] / info["macs_ratio"]
                    v["share_of_macs_ratio_min"] = v["speedup_min"] / info["macs_ratio"]
                    v["share_of_macs_ratio_cpu"] = v["speedup_cpu"] / info["macs_ratio"]
                    v["met_cpu"] = bool(bs in TARGET and v["share_of_macs_ratio_cpu"] >= TARGET[bs])
                    v["target"] = TARGET.get(bs)
                    v["met"] = bool(bs in TARGET and v["share_of_macs_ratio"] >= TARGET[bs])
            cells[str(bs)] = row
        record["models"][name] = {**info, "onnx_export": prepared["onnx_export"], "cells": cells}
    record["compile"] = {
        "inductor_freezing": True,
        "compile_budget_s": args.compile_budget,
        "compile_s": compile_state.get("compile_s", []),
        "skipped": compile_state.get("skipped"),
    }
    record["machine"]["load_avg_after"] = list(os.getloadavg())
    record["wall_s"] = time.perf_counter() - start
    atomic_write_json(args.out, record)
    print(f"wrote {args.out} ({record['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
