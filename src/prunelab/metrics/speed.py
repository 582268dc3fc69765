"""Measured speed-up of a compacted network over its dense original.

Latency on a shared machine is noisy, so the two models are timed side by side in one process,
*interleaved* (dense pass, compact pass, dense pass, ...) by prunelab's one latency timer,
:func:`prunelab.metrics.latency.interleaved_times`, and medians are compared: a load spike hits both.
Backends: eager PyTorch on the CPU, and ONNX Runtime when the optional extra ``prunelab[onnx]`` is
installed (otherwise the result says it was skipped and why).

This module is also the home of prunelab's one ONNX export, :func:`onnx_bytes` (both exporters of
``torch.onnx``), and of its ONNX Runtime session builder, :func:`onnx_runtime_session`: the latency
comparison here and :func:`prunelab.export.export_model` (``prunelab export``) both use them. They live
on this floor, below :mod:`prunelab.export`, so that the metrics do not import the export layer.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.core.inputs import accepted_diff, output_tensors
from prunelab.core.modules import copy_model, eval_mode
from prunelab.metrics.latency import interleaved_times

__all__ = [
    "ONNX_EXPORTERS",
    "ONNX_TOLERANCE",
    "compare_latency",
    "onnx_bytes",
    "onnx_runtime_session",
    "onnx_session",
    "onnxruntime_available",
    "with_export_forms",
]


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` (and ``onnx``, needed by the exporter) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


#: Largest |ONNX Runtime − eager| output difference accepted from an exported file, relative to the
#: largest output magnitude (at least 1): float32 rounding, which grows with the outputs' scale (an
#: untrained ResNet-56 outputs values near 2.5e4).
ONNX_TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------------------
# the one ONNX export (used here and by prunelab.export)
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter: progress lines, graph dumps of failed captures, deprecation and tracer
    warnings, log records (a failure reaches the caller as the exception, in one line)."""
    names = ["torch", "onnx", "onnxscript", "onnx_ir"]
    names += [n for n in logging.root.manager.loggerDict if n.split(".")[0] in names]
    loggers = [logging.getLogger(name) for name in dict.fromkeys(names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


#: The exporters' silencer under its former name (benchmarks/onnx_export_speed.py uses it).
_quiet_exporter = _quiet


def _dynamic_shapes(
    model: nn.Module, args: tuple[Tensor, ...], kwargs: Mapping[str, Tensor]
) -> dict[str, Any] | None:
    """``dynamic_shapes`` marking the leading axis of every input as automatic-dynamic, by argument name."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    spec: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(model.forward).parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            spec[name] = tuple({0: torch.export.Dim.AUTO} for _ in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            spec[name] = {k: {0: torch.export.Dim.AUTO} for k in value}
        else:
            spec[name] = {0: torch.export.Dim.AUTO}
    return spec


ONNX_EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")
"""The ``torch.onnx`` exporters :func:`onnx_bytes` drives: ``"dynamo"`` (the ``torch.export``-based
default, what ``prunelab export`` writes) and ``"torchscript"`` (``dynamo=False``: the tracer, about 30x
faster to export a CIFAR ResNet-56, what the latency comparison of :mod:`prunelab.metrics.speed` uses)."""


def with_export_forms(model: nn.Module) -> nn.Module:
    """``model``, or a copy of it in which every submodule with an ``export_form()`` is replaced by its result.

    A layer offers ``export_form() -> nn.Module`` when a standard layer computes the same function and
    exports to a faster graph; the option-A shortcut of the CIFAR ResNets
    (:meth:`prunelab.models.resnet.PadShortcut.export_form`: an index selection as a fixed 1×1 convolution)
    is one. The caller verifies the exported file against ``model`` as always, so a wrong form cannot pass
    unseen. ``model`` itself is never changed; without such a layer it is returned as it is.
    """
    names = [
        n
        for n, m in model.named_modules(remove_duplicate=False)
        if n and callable(getattr(m, "export_form", None))
    ]
    if not names:
        return model
    lowered = copy_model(model)
    done: list[str] = []
    for name in names:
        if any(name.startswith(prefix + ".") for prefix in done):
            continue  # inside a layer already replaced
        lowered.set_submodule(name, lowered.get_submodule(name).export_form())
        done.append(name)
    return lowered


def onnx_bytes(
    model: nn.Module,
    args: tuple[Tensor, ...],
    kwargs: Mapping[str, Tensor] | None = None,
    *,
    dynamic: bool = True,
    exporter: str = "dynamo",
    input_names: Sequence[str] | None = None,
    export_forms: bool = True,
) -> bytes:
    """The ONNX file of ``model`` called as ``model(*args, **kwargs)``, as bytes (nothing is written).

    prunelab's one ONNX export: :func:`prunelab.export.export_model` and :func:`onnx_session` both
    call it. The caller checks the file's outputs;
    this only exports, with the exporters' narration silenced.

    Args:
        model: the module to export (in the mode it should be exported in, usually eval).
        args, kwargs: example inputs (tensors); their shapes are traced.
        dynamic: make the leading (batch) axis of every input, and of every output, dynamic.
        exporter: one of :data:`ONNX_EXPORTERS`. ``"torchscript"`` takes positional tensors only.
        input_names: names of the graph inputs (default: the ``forward`` argument names for
            ``"dynamo"``, the exporter's ``input.N`` names for ``"torchscript"``).
        export_forms: export every submodule that offers an ``export_form()`` as what that returns, a
            standard layer computing the same (:func:`with_export_forms`); ``False`` exports the modules
            as they are.

    Raises:
        ValueError: an unknown ``exporter``, or keyword inputs with ``"torchscript"``.
        Exception: whatever the exporter raises for a model it cannot export.
    """
    names = list(input_names) if input_names is not None else None
    if export_forms:
        model = with_export_forms(model)
    with _quiet(), torch.no_grad():
        if exporter == "dynamo":
            shapes = _dynamic_shapes(model, args, kwargs or {}) if dynamic else None
            program = torch.onnx.export(
                model, tuple(args), kwargs=dict(kwargs) if kwargs else None, dynamo=True,
                dynamic_shapes=shapes, input_names=names, external_data=False, optimize=True,
                verbose=False,
            )  # fmt: skip
            return program.model_proto.SerializeToString()
        if exporter != "torchscript":
            raise ValueError(f"exporter: {exporter!r} is not one of {', '.join(ONNX_EXPORTERS)}")
        if kwargs:
            raise ValueError("the torchscript exporter takes positional inputs only")
        axes = None
        outputs = None
        if dynamic:
            names = names or [f"input_{k}" for k in range(len(args))]
            count = len(output_tensors(model(*args)))
            outputs = ["output"] if count == 1 else [f"output_{k}" for k in range(count)]
            axes = {n: {0: "batch"} for n in [*names, *outputs]}
        buffer = io.BytesIO()
        torch.onnx.export(
            model, tuple(args), buffer, dynamo=False, input_names=names, output_names=outputs,
            dynamic_axes=axes,
        )  # fmt: skip
        return buffer.getvalue()


def onnx_runtime_session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of an ONNX file (its bytes or its path) on ``threads`` intra-op threads.

    Graph optimisations stay at ONNX Runtime's default, ``ORT_ENABLE_ALL`` (constant folding, Conv+BN and
    Conv+activation fusion, the blocked NCHWc layout); one inter-op thread; warnings only at error level.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _export(model: nn.Module, x: torch.Tensor, path: str, dynamo: bool) -> None:
    """Write ``model`` traced on ``x`` to ``path`` as ONNX (input ``x``, dynamic batch axis), through
    prunelab's one ONNX export, :func:`onnx_bytes`."""
    data = onnx_bytes(
        model, (x,), dynamic=True, exporter="dynamo" if dynamo else "torchscript", input_names=["x"]
    )
    with open(path, "wb") as f:
        f.write(data)


def onnx_session(model: nn.Module, x: torch.Tensor, folder: str) -> tuple[Any, dict[str, Any]]:
    """An ONNX Runtime CPU session of ``model`` (traced on ``x``), verified against the model's outputs.

    The TorchScript-based exporter (``dynamo=False``) goes first: on a CIFAR ResNet-56 it exports
    about 30× faster than the ``torch.export``-based default (1.8 s against 52 s, one thread,
    ``benchmarks/onnx_export_speed.py``), and a latency comparison only needs a correct graph. The default exporter is the fallback when that export fails or its file's outputs
    differ from the model's by more than :data:`ONNX_TOLERANCE` (relative). The file is written in ``folder``;
    the caller removes it.

    Returns:
        ``(session, info)`` with ``info = {"exporter": "torchscript" | "dynamo", "max_abs_diff": float}``
        (plus ``"torchscript_failed"``: the first line of why, when the fallback was used).

    Raises:
        RuntimeError: neither exporter gave a file that reproduces the model's outputs.
    """
    # Two samples where the export traced one: this also checks the dynamic batch axis.
    probe = torch.cat([x, -x])
    with torch.no_grad():
        expected = model(probe).numpy()
    limit = accepted_diff(ONNX_TOLERANCE, [torch.from_numpy(expected)])
    failures: list[str] = []
    for name in ("torchscript", "dynamo"):
        path = os.path.join(folder, f"{name}_{id(model):x}.onnx")
        try:
            _export(model, x, path, dynamo=name == "dynamo")
            session = onnx_runtime_session(path, threads=torch.get_num_threads())
            got = session.run(None, {"x": probe.numpy()})[0]
        except Exception as exc:  # noqa: BLE001 - any failure of one exporter means: try the other
            failures.append(f"{name}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}")
            continue
        diff = float(abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if diff <= limit:
            info: dict[str, Any] = {"exporter": name, "max_abs_diff": diff}
            if failures:
                info["torchscript_failed"] = failures[0]
            return session, info
        failures.append(f"{name}: outputs differ from the model's by {diff:.2e}")
    raise RuntimeError("ONNX export for the latency comparison failed: " + "; ".join(failures))


@torch.no_grad()
def compare_latency(
    dense: nn.Module,
    compact: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    warmup: int = 5,
    repeats: int = 30,
    onnx: bool = True,
    folder: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Median latency (ms) of ``dense`` and ``compact``, interleaved, per backend and batch size.

    Args:
        folder: where the temporary ONNX files go (a run passes its run directory, so nothing is
            written outside the output folder the user chose); they are removed afterwards.
            ``None``: the system's temporary directory.

    Returns:
        ``{"eager_cpu": {bs: {"dense_ms", "compact_ms", "speedup"}}, "onnxruntime": {...} or
        {"skipped": reason}, "threads", "load_avg"}`` (batch sizes as strings, JSON-friendly), plus
        ``"eager_cuda"`` with the same fields when the models live on a GPU. ``"onnxruntime"`` also
        holds ``"export"``: ``{"dense": info, "compact": info}`` from :func:`onnx_session`.
    """
    device = next(dense.parameters()).device
    with eval_mode(dense), eval_mode(compact):  # every module's mode restored after, also on an error
        # The CPU figures are the point of the comparison, so a model trained on a GPU is timed through
        # a CPU copy (in eval mode, as a copy of an eval-mode model); the GPU's own figures are beside them.
        models = [m if device.type == "cpu" else copy_model(m).cpu() for m in (dense, compact)]
        gen = torch.Generator().manual_seed(0)
        out: dict[str, Any] = {"threads": torch.get_num_threads(), "repeats": repeats}
        try:
            out["load_avg_1min_before"] = os.getloadavg()[0]
        except OSError:
            pass
        out["eager_cpu"] = _eager(models, input_shape, batch_sizes, gen, warmup, repeats)
        if device.type == "cuda":
            out[f"eager_{device.type}"] = _eager(
                [dense, compact], input_shape, batch_sizes, gen, warmup, repeats
            )
        if not onnx:
            out["onnxruntime"] = {"skipped": "disabled"}
        elif not onnxruntime_available():
            out["onnxruntime"] = {"skipped": "onnxruntime not installed; pip install 'prunelab[onnx]'"}
        else:
            out["onnxruntime"] = _onnxruntime(models, input_shape, batch_sizes, gen, warmup, repeats, folder)
        return out


def _onnxruntime(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    gen: torch.Generator,
    warmup: int,
    repeats: int,
    folder: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    # A private subfolder: two comparisons sharing a run directory never see each other's files.
    with tempfile.TemporaryDirectory(prefix="onnx-latency-", dir=folder) as tmp:
        x0 = torch.randn((1, *input_shape), generator=gen)
        try:
            built = [onnx_session(m, x0, tmp) for m in models]
        except RuntimeError as exc:
            return {"skipped": str(exc)}
    sessions = [session for session, _ in built]
    rt: dict[str, Any] = {"export": {"dense": built[0][1], "compact": built[1][1]}}
    for bs in batch_sizes:
        feed = {"x": torch.randn((bs, *input_shape), generator=gen).numpy()}
        d, c = _medians([lambda s=s, feed=feed: s.run(None, feed) for s in sessions], warmup, repeats)
        rt[str(bs)] = {"dense_ms": d, "compact_ms": c, "speedup": d / c}
    return rt


def _eager(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    gen: torch.Generator,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    device = next(models[0].parameters()).device
    eager: dict[str, Any] = {}
    for bs in batch_sizes:
        x = torch.randn((bs, *input_shape), generator=gen).to(device)
        d, c = _medians([lambda m=m, x=x: m(x) for m in models], warmup, repeats, device)
        eager[str(bs)] = {"dense_ms": d, "compact_ms": c, "speedup": d / c}
    return eager


def _medians(
    fns: Sequence[Callable[[], object]], warmup: int, repeats: int, device: torch.device | None = None
) -> list[float]:
    """Median time (ms) of each of ``fns``, timed interleaved (see :func:`interleaved_times`)."""
    return [statistics.median(t) for t in interleaved_times(fns, warmup, repeats, device)]
