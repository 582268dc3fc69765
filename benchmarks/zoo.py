"""prunelab next to Torch-Pruning 1.6.1 on the zoo: which works, MACs after, wall time.

For every zoo model (``tests/zoo/zoo_models.py``: torchvision and timm, random weights, 10 classes, the
small input of the zoo test) and every construct model (``tests/constructs.py``), two runs, each in its
own fresh process with a time limit (Torch-Pruning's group search never ends on some models):

* **prunelab**: ``prunelab.prune_channels(model, x, 0.3, criterion="l1_filter", scope=SCOPE, head=...)``
  — trace, score, select, compact, verify (the equivalence check is part of the time);
* **Torch-Pruning**: ``tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
  pruning_ratio=0.3, ignored_layers=[head])``, ``step()`` — the same L1 filter criterion and amount.

``SCOPE`` is ``layer`` by default: Torch-Pruning's ``pruning_ratio`` removes that share in every group,
and prunelab's ``scope="layer"`` does the same, so the MACs are comparable (``--scope global`` for the
one-ranking variant the zoo test uses). "Works" means: the call returns, the pruned model runs on the
example batch and keeps the output shapes; for prunelab the equivalence check passed too (≤ 1e-4). For
Torch-Pruning the pruned model is also compared with the original whose removed channels are zeroed
(``tests/zoo/tp_reference.py``), reported as ``equal`` (LayerNorm/GroupNorm models cannot be equal:
removing a channel changes the norm's statistics). MACs of both results are counted by one counter,
``tp.utils.count_ops_and_params`` (prunelab's own ``dense_macs`` figures are in the JSON as well).

Usage (the zoo virtualenv of ``.ci/run``, or any with torchvision and timm)::

    build/zoo-venv/bin/python benchmarks/zoo.py                 # writes benchmarks/results/zoo_tp_compare.json
    build/zoo-venv/bin/python benchmarks/zoo.py --only timm-resnet18 --timeout 60
    build/zoo-venv/bin/python benchmarks/zoo.py --table benchmarks/results/zoo_tp_compare.json   # markdown only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path[:0] = [str(TESTS / "zoo"), str(TESTS)]

AMOUNT = 0.3


def _entries() -> list[tuple[str, str]]:
    """``(key, kind)`` for every model: ``zoo`` (tests/zoo/zoo_models.py) or ``construct``."""
    from constructs import CONSTRUCTS
    from zoo_models import ZOO

    return [(e.id, "zoo") for e in ZOO] + [(f"construct-{name}", "construct") for name in CONSTRUCTS]


def _build(key: str) -> tuple[Any, Any, str, str]:
    """``(model, example inputs, head, builder)`` for a key."""
    if key.startswith("construct-"):
        from constructs import CONSTRUCTS, HEADS

        name = key[len("construct-") :]
        model, inputs = CONSTRUCTS[name]()
        return model, inputs, HEADS[name][0], f"construct:{name}"
    from zoo_models import BY_ID, build

    entry = BY_ID[key]
    model, inputs = build(entry)
    return model, inputs, entry.head, entry.builder


def _heads(key: str, head: str) -> list[str]:
    if key.startswith("construct-"):
        from constructs import HEADS

        return list(HEADS[key[len("construct-") :]])
    return [head]


def _count(model: Any, inputs: Any) -> tuple[float, float]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, inputs)
    return float(macs), float(params)


def _worker(key: str, tool: str, scope: str) -> dict[str, Any]:
    """One measurement (runs in the child process)."""
    import copy
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from tp_reference import call, flat_output

    model, inputs, head, _builder = _build(key)
    with torch.no_grad():
        before = flat_output(call(model, inputs))
    macs0, params0 = _count(model, inputs)
    out: dict[str, Any] = {"macs_before": macs0, "params_before": params0}
    if tool == "prunelab":
        import prunelab
        from prunelab.errors import PrunelabError

        start = time.perf_counter()
        try:
            small, report = prunelab.prune_channels(
                model, inputs, AMOUNT, criterion="l1_filter", scope=scope, head=head
            )
            out["seconds"] = time.perf_counter() - start
            data = report.to_dict()
            with torch.no_grad():
                after = flat_output(call(small, inputs))
            assert after.shape == before.shape, "output shape changed"
            macs1, params1 = _count(small, inputs)
            removed = data["params_after"] < data["params_before"]
            out.update(
                works=bool(removed),
                status="ok" if removed else "refused",
                message="" if removed else "every group refused: " + "; ".join(list(data["refused"])[:3]),
                max_abs_diff=data["surgery"]["max_abs_diff"],
                macs_after=macs1,
                params_after=params1,
                prunelab_macs_before=data["macs_before"],
                prunelab_macs_after=data["macs_after"],
                channels_before=data["channels_before"],
                channels_after=data["channels_after"],
                refused_groups=len(data["refused"]),
            )
        except PrunelabError as exc:
            out.update(
                works=False,
                status="refused",
                seconds=time.perf_counter() - start,
                message=f"{type(exc).__name__}: {exc}",
                one_line="\n" not in str(exc).strip(),
            )
        except Exception as exc:  # noqa: BLE001 - a traceback-type failure is what is recorded
            out.update(
                works=False,
                status="error",
                seconds=time.perf_counter() - start,
                message=f"{type(exc).__name__}: {exc}"[:500],
            )
        return out
    from tp_reference import tp_prune

    work = copy.deepcopy(model)
    start = time.perf_counter()
    result = tp_prune(work, inputs, _heads(key, head), AMOUNT, check=True)
    out["seconds"] = result.seconds  # pruner construction + step (the reference comparison is not timed)
    out["seconds_with_check"] = time.perf_counter() - start
    runs = result.params_after > 0 and (not result.error or result.error.startswith("pruned model differs"))
    out.update(
        works=bool(runs),
        status="ok" if runs else "error",
        equal=result.error == "" if runs else None,
        max_abs_diff=result.max_abs_diff,
        message=result.error,
    )
    if runs:
        out["macs_after"], out["params_after"] = _count(work, inputs)
    return out


def _run(key: str, tool: str, scope: str, timeout: float, python: str) -> dict[str, Any]:
    """One measurement in a fresh process, with a time limit."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", key, tool, "--scope", scope]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {
            "works": False,
            "status": "timeout",
            "message": f"no result within {timeout:.0f} s",
            "seconds": timeout,
        }
    for line in proc.stdout.splitlines():
        if line.startswith("ZOO-RESULT "):
            data = json.loads(line[len("ZOO-RESULT ") :])
            data["process_seconds"] = round(time.perf_counter() - start, 2)
            return data
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"works": False, "status": "error", "message": f"worker rc {proc.returncode}: {tail[0]}"[:500]}


def _fmt_macs(value: Any) -> str:
    return "–" if value is None else f"{value / 1e6:.1f}M"


def _cell(res: dict[str, Any]) -> str:
    status = res.get("status")
    if status == "ok" and res.get("works"):
        mark = "yes"
        if res.get("equal") is False:
            mark = "yes (≠ masked)"
        if res.get("refused_groups"):
            mark += f" ({res['refused_groups']} groups refused)"
        return mark
    if status == "timeout":
        return "**hangs**"
    if status == "refused":
        return "refused"
    return "**fails**"


def table(record: dict[str, Any]) -> str:
    """The markdown table of a result record."""
    lines = [
        "| model | prunelab works | TP works | MACs before | prunelab MACs after | TP MACs after | prunelab time | TP time | prunelab diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["models"].values():
        pl, tp = row["prunelab"], row["torch_pruning"]
        diff = pl.get("max_abs_diff")
        lines.append(
            f"| `{row['builder']}` | {_cell(pl)} | {_cell(tp)} | {_fmt_macs(pl.get('macs_before') or tp.get('macs_before'))} | "
            f"{_fmt_macs(pl.get('macs_after'))} | {_fmt_macs(tp.get('macs_after'))} | "
            f"{pl.get('seconds', 0):.2f} s | {tp.get('seconds', 0):.2f} s | "
            f"{'–' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("KEY", "TOOL"), help=argparse.SUPPRESS)
    parser.add_argument("--scope", default="layer", choices=("layer", "global"))
    parser.add_argument("--only", nargs="*", default=None, help="model keys (e.g. torchvision-resnet18)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per model and tool")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/zoo_tp_compare.json"))
    parser.add_argument("--table", default=None, help="print the markdown table of a result JSON and exit")
    parser.add_argument(
        "--collect",
        default=None,
        metavar="DIR",
        help="gather a zoo-stage run's outcomes ($PRUNELAB_ZOO_OUT) into benchmarks/results/zoo_checks.json and exit",
    )
    parser.add_argument("--wall", type=float, default=None, help="with --collect: the run's wall time (s)")
    args = parser.parse_args()
    if args.collect:
        collect(Path(args.collect), REPO / "benchmarks/results/zoo_checks.json", args.wall)
        return
    if args.worker:
        key, tool = args.worker
        print("ZOO-RESULT " + json.dumps(_worker(key, tool, args.scope)))
        return
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    import timm
    import torch
    import torch_pruning as tp
    import torchvision

    import prunelab

    keys = [(k, kind) for k, kind in _entries() if args.only is None or k in args.only]
    record: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "amount": AMOUNT,
        "scope": args.scope,
        "criterion": "l1_filter (prunelab) / MagnitudeImportance(p=1) MetaPruner (Torch-Pruning)",
        "threads": 1,
        "timeout_s": args.timeout,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "torch_pruning": tp.__version__,
            "prunelab": prunelab.__version__,
        },
        "models": {},
    }
    out = Path(args.out)
    for key, kind in keys:
        row: dict[str, Any] = {"kind": kind}
        for tool in ("prunelab", "torch_pruning"):
            row[tool] = _run(key, tool, args.scope, args.timeout, sys.executable)
        row["builder"] = _builder_name(key)
        record["models"][key] = row
        pl, tpr = row["prunelab"], row["torch_pruning"]
        print(
            f"{key:40s} prunelab {pl.get('status'):8s} {pl.get('seconds', 0):6.2f}s  "
            f"TP {tpr.get('status'):8s} {tpr.get('seconds', 0):6.2f}s  {(pl.get('message') or tpr.get('message') or '')[:90]}",
            flush=True,
        )
    record["machine"]["load_average_end"] = os.getloadavg()
    from prunelab._io import atomic_write_json

    atomic_write_json(out, record)
    print(table(record))
    print(f"wrote {out}")


def collect(directory: Path, out: Path, wall: float | None) -> None:
    """One JSON of every model's check outcomes from a zoo-stage run, and their markdown table."""
    from prunelab._io import atomic_write_json

    models = {}
    for file in sorted(directory.glob("*.json")):
        data = json.loads(file.read_text())
        if "checks" not in data:
            continue
        for outcome in data["checks"].values():  # keep the first line of messages (tracebacks are in the log)
            outcome["message"] = (
                (outcome.get("message") or "").splitlines()[0] if outcome.get("message") else ""
            )
            outcome.pop("path", None)
        models[data["model"]] = data
    record = {
        "command": "PRUNELAB_ZOO_OUT=DIR build/zoo-venv/bin/python -m pytest -q -n 2 tests/zoo",
        "wall_s": wall,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_now": os.getloadavg(),
        },
        "models": models,
    }
    atomic_write_json(out, record)
    checks = list(next(iter(models.values()))["checks"])
    print("| model | TP 1.6.1 | " + " | ".join(checks) + " |")
    print("|---|---|" + "---|" * len(checks))
    for name, data in models.items():
        cells = []
        for c in checks:
            o = data["checks"].get(c, {})
            status = o.get("status", "–")
            cells.append({"ok": "ok", "refused": "refused", "error": "**ERROR**"}.get(status, status))
        print(f"| `{name}` | {'yes' if data.get('tp_works') else 'no'} | " + " | ".join(cells) + " |")
    print(f"wrote {out}")


def _builder_name(key: str) -> str:
    if key.startswith("construct-"):
        return f"construct:{key[len('construct-') :]}"
    from zoo_models import BY_ID

    return BY_ID[key].builder


if __name__ == "__main__":
    main()
