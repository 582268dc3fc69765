"""Torch-Pruning 1.6.1 as the reference: can *it* prune a model, and is its pruned model right?

:func:`tp_prune` runs ``tp.pruner.MagnitudePruner`` (L1 magnitude importance, a uniform ratio, the heads
ignored) one ``step`` at a time over its groups and builds, alongside, a reference copy of the original
in which every removed output channel is zeroed (forward hooks on the pruned modules, zeroed entries of
pruned bare parameters). The pruned model must run and equal that reference: a model Torch-Pruning
prunes into something that runs but computes something else (a channel shuffle) does not count as
handled.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


def call(model: nn.Module, inputs: Any) -> Any:
    """``model`` applied to a tensor, a tuple of tensors (positional) or a dict (keywords)."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def flat_output(out: Any) -> Tensor:
    """All tensors of a model output (tensor, tuple, list, dict, or an object with tensors) as one vector."""
    if isinstance(out, Tensor):
        return out.detach().flatten().float()
    if isinstance(out, dict):
        return torch.cat([flat_output(v) for _, v in sorted(out.items())])
    if isinstance(out, (tuple, list)):
        return torch.cat([flat_output(v) for v in out])
    raise TypeError(f"cannot compare an output of type {type(out).__name__}")


@dataclass
class TPResult:
    """What Torch-Pruning made of one model."""

    works: bool
    error: str = ""
    max_abs_diff: float | None = None
    params_before: int = 0
    params_after: int = 0
    macs_before: float | None = None
    macs_after: float | None = None
    seconds: float = 0.0
    pruned_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _zero_hook(idxs: list[int], last_dim: bool):
    index = torch.tensor(sorted(idxs))

    def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        return out.index_fill(out.dim() - 1 if last_dim else 1, index.to(out.device), 0.0)

    return hook


def tp_prune(
    model: nn.Module,
    example_inputs: Any,
    heads: list[str] | tuple[str, ...],
    ratio: float = 0.3,
    *,
    check: bool = True,
    count_macs: bool = False,
) -> TPResult:
    """Prune ``model`` (in place) with Torch-Pruning's MagnitudePruner and check it against the masked original.

    ``heads`` are the module names whose outputs stay (``ignored_layers``). ``check=False`` skips the
    reference copy (for large models in the benchmark, where only "does it run" and the MACs matter).
    The result's ``works`` is True when the pruned model runs, keeps the output shapes and (with
    ``check``) its outputs equal the reference's within ``1e-4`` relative to the output scale.
    """
    import torch_pruning as tp

    model.eval()
    with torch.no_grad():
        before = flat_output(call(model, example_inputs))
    result = TPResult(works=False, params_before=sum(p.numel() for p in model.parameters()))
    if count_macs:
        result.macs_before = float(tp.utils.count_ops_and_params(model, example_inputs)[0])
    reference = copy.deepcopy(model) if check else None
    names = {m: n for n, m in model.named_modules()}
    pnames = {p: n for n, p in model.named_parameters()}
    zero_out: dict[str, set[int]] = {}
    zero_par: dict[str, set[int]] = {}
    current: dict[str, list[int]] = {}  # current index -> original index, per pruned module / parameter
    start = time.perf_counter()
    try:
        ignored = [model.get_submodule(h) for h in heads]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MagnitudePruner(
                model,
                example_inputs,
                importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=ratio,
                ignored_layers=ignored,
            )
            for group in pruner.step(interactive=True):
                for item in group.items:
                    dep = item.dep
                    target = dep.target.module
                    if not pruner.DG.is_out_channel_pruning_fn(dep.handler):
                        continue
                    if isinstance(target, nn.Parameter):
                        if target not in pnames:
                            continue
                        key, store = pnames[target], zero_par
                        size = target.shape[max(i for i, s in enumerate(target.shape) if s > 1)]
                    elif isinstance(target, nn.Module) and target in names:
                        key, store = names[target], zero_out
                        size = pruner.DG.get_out_channels(target)
                    else:
                        continue
                    cur = current.setdefault(key, list(range(int(size))))
                    idxs = sorted({int(i) for i in item.idxs})
                    store.setdefault(key, set()).update(cur[i] for i in idxs)
                    for i in reversed(idxs):
                        del cur[i]
                group.prune()
        result.seconds = time.perf_counter() - start
        with torch.no_grad():
            after = flat_output(call(model, example_inputs))
        if after.shape != before.shape:
            raise RuntimeError(f"output shape changed from {tuple(before.shape)} to {tuple(after.shape)}")
        result.params_after = sum(p.numel() for p in model.parameters())
        result.pruned_modules = sorted(zero_out) + sorted(zero_par)
        if count_macs:
            result.macs_after = float(tp.utils.count_ops_and_params(model, example_inputs)[0])
        if reference is not None:
            with torch.no_grad():
                for pname, idx in zero_par.items():
                    p = reference.get_parameter(pname)
                    dim = max(i for i, s in enumerate(p.shape) if s > 1)
                    p.index_fill_(dim, torch.tensor(sorted(idx)), 0.0)
            for mname, idx in zero_out.items():
                module = reference.get_submodule(mname)
                last = isinstance(module, nn.Linear) or (
                    isinstance(module, nn.LayerNorm) and "2d" not in type(module).__name__.lower()
                )
                module.register_forward_hook(_zero_hook(sorted(idx), last))
            with torch.no_grad():
                ref = flat_output(call(reference, example_inputs))
            result.max_abs_diff = float((after - ref).abs().max())
            scale = max(1.0, float(ref.abs().max()))
            if result.max_abs_diff > 1e-4 * scale:
                result.error = (
                    f"pruned model differs from the masked original: max |diff| {result.max_abs_diff:.3g}"
                )
                return result
        result.works = True
    except Exception as exc:  # noqa: BLE001 - Torch-Pruning's own failure is a measurement here
        result.seconds = result.seconds or time.perf_counter() - start
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return result
