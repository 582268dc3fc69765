"""The prunelab checks the zoo runs on every model, each returning an :class:`Outcome`.

A check's outcome is one of

* ``ok`` — it ran and its invariant holds (the equivalence diff of a compaction ≤ ``TOLERANCE``, the
  requested sparsity reached, the exported file verified, ...);
* ``refused`` — prunelab raised a :class:`prunelab.errors.PrunelabError` whose message is one line
  (the model or construct is outside what the check supports, and it says so);
* ``error`` — anything else: a traceback-type exception, a multi-line refusal, a broken invariant. Every
  ``error`` is a defect.

``run_checks(model, inputs, head, ...)`` runs them all on one model (each on its own copy) and returns
``{check: Outcome}`` plus the L1-compacted model, which ``save`` and ``export`` use. The test
(``test_zoo.py``), the construct test and ``benchmarks/zoo.py`` share this code.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tp_reference import call, flat_output  # beside this file: one way to call a model and flatten its output

OUT_ENV = "PRUNELAB_ZOO_OUT"


def zoo_out_dir() -> Path:
    """Where every model's outcome JSON and saved files go (shared by xdist workers)."""
    path = os.environ.get(OUT_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="prunelab-zoo-")
        os.environ[OUT_ENV] = path  # inherited by xdist workers started after this
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def record(key: str, data: dict[str, Any]) -> None:
    """Write one model's outcomes as ``<PRUNELAB_ZOO_OUT>/<key>.json``."""
    path = zoo_out_dir() / f"{key}.json"
    path.write_text(json.dumps(data, indent=1, default=str))


TOLERANCE = 1e-4
AMOUNT = 0.3  # share of channels removed by the structured checks
SPARSITY = 0.5  # share of weights masked by the unstructured checks

CHECKS = ("masks", "l1_filter", "bn_scale", "pls_vip", "relief", "interspace", "save", "export")
STRUCTURED = ("l1_filter", "bn_scale", "pls_vip")


@dataclass
class Outcome:
    """What one check did on one model."""

    status: str  # ok | refused | error
    message: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            **self.details,
        }


def batch_size(inputs: Any) -> int:
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, dict):
        return batch_size(next(iter(inputs.values())))
    return batch_size(inputs[0])


def calibration(inputs: Any, num_classes: int, batches: int = 2, seed: int = 0) -> list[tuple[Any, Tensor]]:
    """``batches`` calibration ``(x, y)`` pairs shaped like ``inputs``, seeded, labels cycling over the classes."""
    g = torch.Generator().manual_seed(seed + 11)

    def like(t: Tensor) -> Tensor:
        if t.is_floating_point():
            return torch.randn(t.shape, generator=g, dtype=t.dtype)
        return t.clone()

    out = []
    for b in range(batches):
        if isinstance(inputs, Tensor):
            x: Any = like(inputs)
        elif isinstance(inputs, dict):
            x = {k: like(v) for k, v in inputs.items()}
        else:
            x = tuple(like(v) for v in inputs)
        n = batch_size(inputs)
        y = (torch.arange(n) + b * n) % num_classes
        out.append((x, y))
    return out


class Refused(Exception):
    """Raised by a check for a documented refusal that is not an exception of prunelab's (e.g. every
    channel group of the model refused, reported in ``report.refused``)."""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}"


def run_check(fn: Callable[[], dict[str, Any] | None]) -> Outcome:
    """Run one check: ``fn`` returns details (ok) or raises (refused when a one-line PrunelabError)."""
    from prunelab.errors import PrunelabError

    start = time.perf_counter()
    try:
        details = fn() or {}
    except PrunelabError as exc:
        text = str(exc).strip()
        seconds = time.perf_counter() - start
        if text and "\n" not in text and "Traceback" not in text:
            return Outcome("refused", f"{type(exc).__name__}: {text}", seconds)
        return Outcome("error", f"multi-line refusal: {_one_line(exc)[:2000]}", seconds)
    except Refused as exc:
        return Outcome("refused", str(exc), time.perf_counter() - start)
    except AssertionError as exc:
        return Outcome("error", f"check failed: {exc}"[:2000], time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - every other exception is the defect being recorded
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-6))
        return Outcome("error", f"{_one_line(exc)[:500]}\n{tb}", time.perf_counter() - start)
    return Outcome("ok", "", time.perf_counter() - start, details)


def _reference_output(model: nn.Module, inputs: Any) -> Tensor:
    with torch.no_grad():
        return flat_output(call(model, inputs))


def _masks(model: nn.Module, inputs: Any, exclude: Sequence[str]) -> dict[str, Any]:
    import prunelab

    work = copy.deepcopy(model)
    pruner = prunelab.prune(work, SPARSITY, exclude=list(exclude) or None)
    out = _reference_output(work, inputs)
    assert torch.isfinite(out).all(), "masked model gives non-finite outputs"
    sparsity = float(pruner.sparsity())
    assert abs(sparsity - SPARSITY) < 0.02, f"masked sparsity {sparsity:.4f}, asked {SPARSITY}"
    baked = pruner.bake()
    assert torch.allclose(_reference_output(baked, inputs), out, atol=TOLERANCE), "baked model differs"
    return {"sparsity": round(sparsity, 4)}


def _structured(
    model: nn.Module,
    inputs: Any,
    head: str | None,
    criterion: str,
    num_classes: int,
    keep: dict[str, Any],
) -> dict[str, Any]:
    import prunelab

    kwargs: dict[str, Any] = {}
    if criterion == "pls_vip":
        kwargs["calibration"] = calibration(inputs, num_classes)
    before = _reference_output(model, inputs)
    small, report = prunelab.prune_channels(model, inputs, AMOUNT, criterion=criterion, head=head, **kwargs)
    data = report.to_dict()
    diff = float(data["surgery"]["max_abs_diff"])
    assert diff <= TOLERANCE, f"equivalence max |diff| {diff:.3g} > {TOLERANCE}"
    after = _reference_output(small, inputs)
    assert after.shape == before.shape, f"output shape {tuple(after.shape)} != {tuple(before.shape)}"
    assert torch.isfinite(after).all(), "compacted model gives non-finite outputs"
    refused = {k: str(v).strip().splitlines()[0] for k, v in data["refused"].items()}
    if data["params_after"] >= data["params_before"]:
        if refused:
            first = next(iter(refused.items()))
            raise Refused(f"every selected group refused ({len(refused)}): {first[0]}: {first[1]}")
        raise AssertionError("nothing was removed and nothing refused")
    if criterion == "l1_filter":
        keep["small"] = small
    return {
        "max_abs_diff": diff,
        "params_before": int(data["params_before"]),
        "params_after": int(data["params_after"]),
        "macs_before": int(data["macs_before"]),
        "macs_after": int(data["macs_after"]),
        "channels_before": int(data["channels_before"]),
        "channels_after": int(data["channels_after"]),
        "refused_groups": refused,
    }


def _relief(model: nn.Module, inputs: Any, num_classes: int, exclude: Sequence[str]) -> dict[str, Any]:
    from prunelab import Pruner
    from prunelab.criteria.relief import collect_relief

    work = copy.deepcopy(model)
    pruner = Pruner(
        work,
        criterion="relief",
        granularity="kernel",
        scope="layer",
        selector="cumulative_mass",
        companion="bias",
        exclude=list(exclude) or None,
    ).prepare()
    stats = {"relief": collect_relief(work, calibration(inputs, num_classes), pruner.targets)}
    report = pruner.step(0.9, stats=stats)
    out = _reference_output(work, inputs)
    assert torch.isfinite(out).all(), "relief-pruned model gives non-finite outputs"
    sparsity = float(report.sparsity)
    assert 0.0 < sparsity < 1.0, f"relief sparsity {sparsity}"
    return {"sparsity": round(sparsity, 4)}


def _interspace(model: nn.Module, inputs: Any, exclude: Sequence[str]) -> dict[str, Any]:
    from prunelab import Pruner
    from prunelab.core.inputs import accepted_diff
    from prunelab.reparam import interspace_layers

    work = copy.deepcopy(model)
    before = _reference_output(work, inputs)
    pruner = Pruner(work, reparam="interspace", exclude=list(exclude) or None).prepare()
    same = _reference_output(work, inputs)
    assert float((same - before).abs().max()) <= accepted_diff(TOLERANCE, [before]), (
        "attaching the filter basis changed the model"
    )
    layers = len(interspace_layers(work))
    assert layers > 0 or not any(
        isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) for m in work.modules()
    ), "no conv got a filter basis"
    report = pruner.step(SPARSITY)
    out = _reference_output(work, inputs)
    assert torch.isfinite(out).all(), "interspace-pruned model gives non-finite outputs"
    return {"sparsity": round(float(report.sparsity), 4), "interspace_layers": layers}


def _save(
    small: nn.Module,
    inputs: Any,
    builder: Any,
    kwargs: dict[str, Any],
    head: str | None,
    directory: Path,
    key: str,
) -> dict[str, Any]:
    import prunelab

    path = directory / f"{key}.pt"
    prunelab.save_pruned(small, path, builder=builder, kwargs=kwargs, head=head, example_inputs=inputs)
    with torch.no_grad():
        expected = call(small.eval(), inputs)
    torch.save({"inputs": inputs, "expected": flat_output(expected)}, directory / f"{key}.expected.pt")
    return {"path": str(path), "bytes": path.stat().st_size}


def _export(small: nn.Module, inputs: Any, directory: Path, key: str, fmt: str) -> dict[str, Any]:
    from prunelab.export import export_model

    suffix = {"onnx": ".onnx", "torchscript": ".ts", "torch-export": ".pt2"}[fmt]
    path = directory / f"{key}{suffix}"
    report = export_model(small, inputs, path, format=fmt, tolerance=TOLERANCE, latency=False)
    assert report.verified, f"export not verified (max |diff| {report.max_abs_diff})"
    # TOLERANCE per unit of output, the export's own rule (float32 rounding grows with the logits).
    assert report.max_abs_diff <= report.accepted_diff, (
        f"export max |diff| {report.max_abs_diff:.3g} > {report.accepted_diff:.3g}"
    )
    return {
        "format": fmt,
        "max_abs_diff": float(report.max_abs_diff),
        "output_scale": float(report.output_scale),
        "bytes": int(report.bytes),
    }


def run_checks(
    model: nn.Module,
    inputs: Any,
    head: str | None,
    *,
    builder: Any,
    kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    directory: Path,
    key: str,
    checks: Sequence[str] = CHECKS,
    export_format: str = "onnx",
    unstructured_exclude: Sequence[str] = (),
) -> dict[str, Outcome]:
    """Run ``checks`` on ``model`` (never modified); ``save``/``export`` use the L1-compacted model.

    ``unstructured_exclude`` (module-name globs) stay dense in the mask, relief and interspace checks.

    When the L1 compaction did not produce a model (refused or failed), ``save`` and ``export`` run on a
    masked copy instead (unstructured pruning: the file still has to reload and export).
    """
    model.eval()
    if num_classes is None:  # the head's outputs (a decoder's image channels count as its "classes")
        layer = model.get_submodule(head) if head else None
        num_classes = int(getattr(layer, "out_features", getattr(layer, "out_channels", 10)))
    keep: dict[str, Any] = {}
    results: dict[str, Outcome] = {}
    for name in checks:
        if name == "masks":
            results[name] = run_check(lambda: _masks(model, inputs, unstructured_exclude))
        elif name in STRUCTURED:
            results[name] = run_check(
                lambda name=name: _structured(model, inputs, head, name, num_classes, keep)
            )
        elif name == "relief":
            results[name] = run_check(lambda: _relief(model, inputs, num_classes, unstructured_exclude))
        elif name == "interspace":
            results[name] = run_check(lambda: _interspace(model, inputs, unstructured_exclude))
        elif name in ("save", "export"):
            if "small" not in keep:
                import prunelab

                masked = copy.deepcopy(model)
                prunelab.prune(masked, SPARSITY).bake()
                keep["small"] = masked
                keep["small_kind"] = "masked"
            small = keep["small"]
            if name == "save":
                results[name] = run_check(
                    lambda small=small: _save(
                        small, inputs, builder, dict(kwargs or {}), head, directory, key
                    )
                )
            else:
                results[name] = run_check(
                    lambda small=small: _export(small, inputs, directory, key, export_format)
                )
            results[name].details.setdefault("model", keep.get("small_kind", "l1_filter"))
        else:
            raise ValueError(f"unknown check {name!r}")
    return results


RELOAD_SERVER = r"""
import json, sys, traceback
import torch
torch.set_num_threads(1)
import prunelab
from prunelab.errors import PrunelabError


def flat(o):
    if isinstance(o, torch.Tensor):
        return o.detach().flatten().float()
    if isinstance(o, dict):
        return torch.cat([flat(v) for _, v in sorted(o.items())])
    return torch.cat([flat(v) for v in o])


print("READY", flush=True)
for line in sys.stdin:
    path = json.loads(line)
    try:
        model = prunelab.load_pruned(path)
        ref = torch.load(path[:-3] + ".expected.pt", weights_only=True)
        inputs = ref["inputs"]
        with torch.no_grad():
            if isinstance(inputs, dict):
                y = model(**inputs)
            elif isinstance(inputs, (tuple, list)):
                y = model(*inputs)
            else:
                y = model(inputs)
        diff = float((flat(y) - ref["expected"]).abs().max())
        ok = diff <= 1e-5
        out = {"status": "ok" if ok else "error", "max_abs_diff": diff,
               "message": "" if ok else f"reloaded model differs from the saved one: max |diff| {diff:.3g}"}
    except PrunelabError as exc:
        text = str(exc).strip()
        status = "refused" if text and "\n" not in text else "error"
        out = {"status": status, "message": f"{type(exc).__name__}: {text}"}
    except Exception as exc:
        out = {"status": "error", "message": f"{type(exc).__name__}: {str(exc).strip()[:500]}\n"
               + traceback.format_exc(limit=-6)}
    print("RESULT " + json.dumps(out), flush=True)
"""


class Reloader:
    """One fresh interpreter that loads saved files on request (``prunelab.load_pruned``) and compares
    each reloaded model's outputs with the ones recorded at save time: the save → reload check of every
    model costs one process start in all, not one per model. The process never built the models it loads.
    """

    def __init__(self, python: str, env: dict[str, str] | None = None) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [python, "-u", "-c", RELOAD_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if first.strip() != "READY":
            raise RuntimeError(f"reload process did not start: {first}{self._stderr()}")

    def _stderr(self) -> str:
        try:
            assert self.proc.stderr is not None
            return self.proc.stderr.read()[-3000:]
        except Exception:  # noqa: BLE001
            return ""

    def load(self, path: str | Path) -> Outcome:
        """Reload ``path`` in the fresh process; ``ok`` when its outputs equal the saved model's (≤ 1e-5)."""
        import json

        assert self.proc.stdin is not None and self.proc.stdout is not None
        start = time.perf_counter()
        if self.proc.poll() is not None:
            return Outcome("error", f"reload process exited (rc {self.proc.returncode})")
        self.proc.stdin.write(json.dumps(str(path)) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                data = json.loads(line[len("RESULT ") :])
                status, message = data.pop("status"), data.pop("message")
                return Outcome(status, message, time.perf_counter() - start, data)
        return Outcome("error", f"reload process died: {self._stderr()}", time.perf_counter() - start)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self.proc.kill()


def problems(
    outcomes: dict[str, Outcome],
    *,
    tp_works: bool,
    has_batchnorm: bool,
) -> dict[str, str]:
    """The failures of one model's outcomes, ``{check: why}``, by the zoo's rules (empty = the model passes).

    * every ``error`` fails (a traceback, a broken invariant, an equivalence diff above the tolerance);
    * a structured check refused on a model Torch-Pruning prunes fails — except ``bn_scale`` on a model
      without any BatchNorm (there is nothing to read the scale from);
    * the unstructured checks (masks, relief, interspace) and save/export/reload must never refuse on a
      model that runs.
    """
    out: dict[str, str] = {}
    for name, outcome in outcomes.items():
        if outcome.status == "error":
            out[name] = f"ERROR {outcome.message}"
        elif outcome.status == "refused":
            if name in STRUCTURED:
                if not tp_works or (name == "bn_scale" and not has_batchnorm):
                    continue
                out[name] = f"refused although Torch-Pruning 1.6.1 prunes this model: {outcome.message}"
            else:
                out[name] = f"refused: {outcome.message}"
    return out


def judge(key: str, failures: dict[str, str], known: dict[str, dict[str, str]]) -> None:
    """Fail the test on every failure not listed in ``known[key]``; xfail it when only known defects remain.

    ``known`` (``zoo_models.KNOWN_DEFECTS``) lists measured prunelab defects that are reported and being
    fixed; the table still shows them, and a fixed one simply passes (then delete its entry).
    """
    import pytest

    listed = known.get(key, {})
    new = {c: why for c, why in failures.items() if c not in listed}
    if new:
        pytest.fail(f"{key}:\n  " + "\n  ".join(f"{c}: {why}" for c, why in new.items()), pytrace=False)
    hit = {c: listed[c] for c in failures if c in listed}
    if hit:
        pytest.xfail("known defect(s): " + "; ".join(f"{c}: {why}" for c, why in hit.items()))
