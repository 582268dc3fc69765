"""Dense vs compacted vgg19 latency at a realistic width (eager CPU), with a per-layer breakdown.

The channel selection comes from a finished slimming run (any width): the share of channels that run
kept in every channel group (read from its compacted ``checkpoint.pt``) is applied to a fresh vgg19 of
the width asked for (``round(share × channels)`` per group, at least 1). Latency does not depend on the
weights, so the weights are the untrained zoo ones; the compaction goes through
:func:`prunelab.surgery.compact` (equivalence-checked) like in a run. Dense and compacted networks are
timed interleaved in one process (:func:`prunelab.metrics.speed.compare_latency`, medians), for every
thread count given; then one forward pass per model at the largest batch is broken down by layer type
and per conv with forward hooks (median of a few passes), to show which layers keep the speed-up below
the MACs ratio.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/slimming_speed_vgg19.py /tmp/sq/ns --width 1.0 \
        --threads 1 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab._io import atomic_write_json
from prunelab.checkpoint import build_from_checkpoint, load_checkpoint
from prunelab.metrics import dense_macs
from prunelab.metrics.speed import compare_latency
from prunelab.models import build_model
from prunelab.surgery import ChannelGraph, compact


def _conv_out(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _conv_macs(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    macs: dict[str, float] = {}

    def hook(name: str):
        def f(m: nn.Conv2d, inp: Any, out: torch.Tensor) -> None:
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            macs[name] = float(out.numel() // out.shape[0] * k)

        return f

    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return macs


def _breakdown(model: nn.Module, x: torch.Tensor, passes: int) -> dict[str, dict[str, float]]:
    """Median ms per leaf module over ``passes`` forward passes (hooks add a little overhead)."""
    times: dict[str, list[float]] = defaultdict(list)
    start: dict[str, float] = {}
    kinds: dict[str, str] = {}
    hs = []
    for n, m in model.named_modules():
        if len(list(m.children())) or not n:
            continue
        kinds[n] = type(m).__name__

        def pre(mod: nn.Module, inp: Any, n: str = n) -> None:
            start[n] = time.perf_counter()

        def post(mod: nn.Module, inp: Any, out: Any, n: str = n) -> None:
            times[n].append((time.perf_counter() - start[n]) * 1e3)

        hs += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    model.eval()
    with torch.no_grad():
        model(x)
        for samples in times.values():
            samples.clear()
        for _ in range(passes):
            model(x)
    for h in hs:
        h.remove()
    return {n: {"kind": kinds[n], "ms": statistics.median(v)} for n, v in times.items()}  # type: ignore[dict-item]


def main() -> None:
    """Measure and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="finished slimming run directory (channel shares per group)")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--round-to",
        type=int,
        default=1,
        help="round every group's kept channels up to a multiple of this (1: exact shares)",
    )
    parser.add_argument("--passes", type=int, default=5, help="forward passes for the per-layer breakdown")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also time both models in ONNX Runtime (pip install 'prunelab[onnx]')",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "slimming_speed_vgg19.json"))
    args = parser.parse_args()

    arch = load_checkpoint(args.run)["arch"]
    shape = tuple(arch["input_shape"])
    src_dense = build_model(
        arch["model"], num_classes=arch["num_classes"], input_shape=shape, **arch["kwargs"]
    )
    src_small = build_from_checkpoint(args.run)
    d_out, s_out = _conv_out(src_dense), _conv_out(src_small)
    share = {n: s_out[n] / d_out[n] for n in d_out}

    torch.manual_seed(0)
    kwargs = dict(arch["kwargs"], width=args.width)
    dense = build_model(arch["model"], num_classes=arch["num_classes"], input_shape=shape, **kwargs).eval()
    graph = ChannelGraph(dense, shape)
    keep: dict[str, torch.Tensor] = {}
    for g in graph.groups:
        k = max(1, round(share[g.name] * g.size))
        k = min(g.size, -(-k // args.round_to) * args.round_to)
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[torch.randperm(g.size)[:k]] = True
        keep[g.name] = mask
    small, report = compact(dense, keep, shape)
    small.eval()
    removed = sum(int((~m).sum()) for m in keep.values())
    total = sum(m.numel() for m in keep.values())
    macs_d, macs_s = dense_macs(dense, shape), dense_macs(small, shape)
    result: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=... .venv/bin/python benchmarks/slimming_speed_vgg19.py "
        + " ".join(f"{k}={v}" for k, v in vars(args).items()),
        "selection_from": str(args.run),
        "source_width": arch["kwargs"].get("width"),
        "width": args.width,
        "round_to": args.round_to,
        "channels_removed": [removed, total],
        "params_dense": sum(p.numel() for p in dense.parameters()),
        "params_compact": sum(p.numel() for p in small.parameters()),
        "macs_dense": macs_d,
        "macs_compact": macs_s,
        "macs_ratio": macs_d / macs_s,
        "kept_per_conv": {
            n: [c, d_out_w] for (n, c), d_out_w in zip(_conv_out(small).items(), _conv_out(dense).values())
        },
        "surgery_max_diff": report.max_abs_diff,
        "load_avg_1min_start": os.getloadavg()[0],
        "by_threads": {},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "kept_per_conv"}), flush=True)
    for t in args.threads:
        torch.set_num_threads(t)
        speed = compare_latency(dense, small, shape, (1, 64), repeats=args.repeats, onnx=args.onnx)
        speed["load_avg_1min_after"] = os.getloadavg()[0]
        result["by_threads"][str(t)] = speed
        print(t, json.dumps(speed), flush=True)
    # per-layer breakdown at batch 64 with the first thread count
    torch.set_num_threads(args.threads[0])
    x = torch.randn(64, *shape)
    bd = {"dense": _breakdown(dense, x, args.passes), "compact": _breakdown(small, x, args.passes)}
    kinds: dict[str, dict[str, float]] = {}
    for which, rows in bd.items():
        acc: dict[str, float] = defaultdict(float)
        for r in rows.values():
            acc[r["kind"]] += r["ms"]  # type: ignore[operator]
        kinds[which] = dict(acc)
    md, ms = _conv_macs(dense, x), _conv_macs(small, x)
    convs = {
        n: {
            "dense_ms": bd["dense"][n]["ms"],
            "compact_ms": bd["compact"][n]["ms"],
            "speedup": bd["dense"][n]["ms"] / bd["compact"][n]["ms"],  # type: ignore[operator]
            "macs_ratio": md[n] / ms[n],
            "dense_gmac_per_s": 64 * md[n] / bd["dense"][n]["ms"] / 1e6,  # type: ignore[operator]
            "compact_gmac_per_s": 64 * ms[n] / bd["compact"][n]["ms"] / 1e6,  # type: ignore[operator]
        }
        for n in md
    }
    result["breakdown_b64"] = {"threads": args.threads[0], "by_kind_ms": kinds, "convs": convs}
    result["load_avg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result["breakdown_b64"], indent=1))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
