"""The ``prunelab`` command line.

Subcommands: ``demo``, ``run``, ``sweep``, ``validate``, ``list``, ``report`` and ``export``;
``prunelab SUBCOMMAND --help`` documents each. User errors (bad recipe, missing data, corrupted
checkpoint, ...) print one line ``prunelab: error: ...`` and exit non-zero (2 for recipe errors) without
a traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunelab.errors import ConfigError, PrunelabError, error_line

if TYPE_CHECKING:  # the sweep module is imported lazily, by the subcommands that use it
    from prunelab.experiments.sweep_spec import SweepSpec

LISTABLE = (
    "models",
    "datasets",
    "methods",
    "drivers",
    "criteria",
    "schedules",
    "granularities",
    "reparams",
    "pretrained",
)

#: What ``prunelab list`` (without a kind) prints: every kind, what it is, and where a recipe names it.
LIST_KINDS: dict[str, str] = {
    "models": "architectures (model.name), then the sources beyond the zoo (torchvision:, timm:, your own)",
    "datasets": "datasets and their readers (data.name)",
    "methods": "pruning methods: presets of a driver and its options (prune.method)",
    "drivers": "the code that runs a method: training, pruning and fine-tuning stages, in order",
    "criteria": "importance scores, per entry or per channel group (prune.options.criterion)",
    "schedules": "how the pruned share grows over the steps of a driver (prune.options.schedule)",
    "granularities": "the unit one mask entry removes: weight, kernel, filter, channel (prune.options.granularity)",
    "reparams": "what the masks act on: the weights, or interspace filter-basis coefficients (prune.reparam)",
    "pretrained": "pretrained weights: whether the file is present, and where (model.pretrained)",
    "recipes": "the recipes and sweeps shipped in the repository's recipes/ folder, one line each",
}


def _registry(kind: str):
    """The registry that ``prunelab list KIND`` prints (every kind of LISTABLE but pretrained's files)."""
    if kind == "models":
        from prunelab.models import MODELS as reg
    elif kind == "pretrained":
        from prunelab.models import PRETRAINED as reg
    elif kind == "datasets":
        from prunelab.data import DATASETS as reg
    elif kind == "methods":
        from prunelab.methods import METHODS as reg
    elif kind == "drivers":
        from prunelab.methods import DRIVERS as reg
    elif kind == "criteria":
        from prunelab.criteria import CRITERIA as reg
    elif kind == "schedules":
        from prunelab.core.schedules import SCHEDULES as reg
    elif kind == "reparams":
        from prunelab.reparam import REPARAMS as reg
    else:
        from prunelab.core.granularity import GRANULARITIES as reg
    return reg


def _default_out(name: str) -> Path:
    """A new run directory ``runs/<name>-<timestamp>[-N]``, created here so no other run can take it.

    Where ``runs/`` cannot be created the path is returned as it is and the run's directory check
    reports why.
    """
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{name}-{stamp}"
    out, n = base, 1
    while True:
        try:
            out.mkdir(parents=True)
        except FileExistsError:
            if not out.is_dir():
                return out
            n += 1  # another run started in the same second
            out = base.with_name(f"{base.name}-{n}")
            continue
        except OSError:
            return out
        return out


def cmd_run(args: argparse.Namespace) -> int:
    """``prunelab run RECIPE``: validate, then execute one recipe."""
    from prunelab import distributed as dist
    from prunelab.experiments.runner import result_line, run_or_keep
    from prunelab.experiments.schema import load_recipe

    overrides = list(args.set or [])
    if args.download:
        overrides.append("data.download=true")
    if args.tensorboard:
        overrides.append("train.tensorboard=true")
    recipe = load_recipe(args.recipe, overrides)
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out DIR, the run directory to continue")
    dist.init_distributed()
    main_process = dist.is_main_process()  # read before cleanup() forgets the process group
    try:
        # Under torchrun every rank must agree on the directory; rank 0 picks (and creates) it.
        out = (
            Path(args.out)
            if args.out
            else Path(dist.broadcast_object(str(_default_out(recipe.name)) if main_process else ""))
        )
        summary, finished = run_or_keep(
            recipe,
            out,
            resume=args.resume,
            overwrite=args.overwrite,
            data_dir=args.data_dir,
            progress=not args.quiet,
            echo=None if args.quiet else print,
        )
    finally:
        dist.cleanup()
    if main_process:
        print(result_line(out, summary, finished))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """``prunelab validate FILE ...``: check recipes, and sweeps (``*.sweep.yaml``: every expanded run),
    without running them; every problem of a file is printed, one line each.

    With ``--data-dir DIR`` (or ``--check-data``: the default data root) the dataset and pretrained
    weights each recipe reads must also be present there.
    """
    from prunelab.experiments.schema import check_recipe_files, load_recipe
    from prunelab.experiments.sweep_spec import expand_sweep, load_sweep

    check_files = args.data_dir is not None or args.check_data
    failed = 0
    for path in args.recipes:
        try:
            if str(path).endswith(".sweep.yaml"):
                if args.set:
                    raise ConfigError(
                        f"{path}: --set applies to recipes; a sweep's overrides go in its stages"
                    )
                spec = load_sweep(path)
                runs = expand_sweep(spec, _sweep_dir(spec, None))
                if check_files:
                    from prunelab.experiments.schema import recipe_from_dict

                    data_dir = args.data_dir or spec.data_dir
                    for run in runs:
                        try:
                            check_recipe_files(recipe_from_dict(run.recipe), data_dir)
                        except ConfigError as exc:
                            raise exc.prefixed(f"{path}: run {run.id}: ") from None
                detail = f" ({len(runs)} runs)"
            else:
                recipe = load_recipe(path, list(args.set or []))
                if check_files:
                    try:
                        check_recipe_files(recipe, args.data_dir)
                    except ConfigError as exc:
                        raise exc.prefixed(f"{path}: ") from None
                detail = ""
        except ConfigError as exc:
            failed += 1
            for line in exc.errors:
                print(f"prunelab: error: {line}", file=sys.stderr)
        except PrunelabError as exc:
            failed += 1
            print(f"prunelab: error: {exc}", file=sys.stderr)
        else:
            print(f"ok: {path}{detail}")
    return 2 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    """``prunelab list [KIND]``: the kinds, or the names of one kind with one-line descriptions."""
    if args.dir is not None and args.kind != "recipes":
        raise ConfigError("--dir is for 'prunelab list recipes'; leave it out for other kinds")
    if args.data_dir is not None and args.kind != "pretrained":
        raise ConfigError("--data-dir is for 'prunelab list pretrained'; leave it out for other kinds")
    if args.kind is None:
        print("prunelab list KIND, where KIND is one of:")
        entries = list(LIST_KINDS.items())
    elif args.kind == "recipes":
        from prunelab.experiments.catalog import describe_recipes, find_recipes_dir

        folder = find_recipes_dir(args.dir)
        print(f"recipes in {folder} (run one: prunelab run {folder}/<path>; a *.sweep.yaml: prunelab sweep)")
        entries = describe_recipes(folder)
    elif args.kind == "pretrained":
        from prunelab.experiments.catalog import describe_pretrained
        from prunelab.models.pretrained import default_data_dir

        rows = describe_pretrained(args.data_dir)
        root = Path(args.data_dir) if args.data_dir else default_data_dir()
        print(
            f"weights files in {root / 'weights'} (data root: --data-dir, else $PRUNELAB_DATA or ~/.cache/prunelab)"
        )
        name_w = max((len(r[0]) for r in rows), default=0)
        text_w = max((len(r[1]) for r in rows), default=0)
        status_w = max((len(r[2]) for r in rows), default=0)
        for name, text, status, path in rows:
            print(f"{name:<{name_w}}  {text:<{text_w}}  {status:<{status_w}}  {path}")
        return 0
    elif args.kind == "criteria":
        from prunelab.criteria import describe_criteria

        # One line per criterion; the level(s) say where it can be used (entry: the pruner's
        # criterion; group: the structured methods' channel criterion).
        rows = [(name, " + ".join(levels), text) for name, levels, text in describe_criteria()]
        level_width = max((len(levels) for _, levels, _ in rows), default=0)
        entries = [(name, f"{levels:<{level_width}}  {text}") for name, levels, text in rows]
    elif args.kind == "models":
        from prunelab.models import describe_sources

        # The zoo, then the sources beyond it (torchvision, timm, the user's own callables).
        entries = [*_registry("models").describe(), ("", ""), *describe_sources()]
    else:
        entries = _registry(args.kind).describe()
    width = max((len(name) for name, _ in entries), default=0)
    for name, help_text in entries:
        print(f"{name:<{width}}  {help_text}".rstrip())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``prunelab report RUN_DIR ...``: write markdown and HTML reports with grouped tables and plots."""
    from prunelab.experiments.report import write_report

    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()] if args.group_by else None
    path = write_report(args.run_dirs, args.out, group_by=group_by, html=not args.no_html)
    print(f"wrote {path}")
    return 0


def _sweep_dir(spec: SweepSpec, out: str | None) -> Path:
    """The directory a sweep writes to: ``out``, or ``sweeps/<name>`` (a checked name: never outside)."""
    from prunelab.dataclass_yaml import check_name

    return Path(out) if out else Path("sweeps") / check_name(spec.name, "sweep.name")


def cmd_sweep(args: argparse.Namespace) -> int:
    """``prunelab sweep SWEEP.yaml``: run (or continue) a grid of recipes; exit 1 if any run failed."""
    from prunelab.experiments.sweep import plan_sweep, run_sweep
    from prunelab.experiments.sweep_spec import load_sweep

    spec = load_sweep(args.sweep)
    out = _sweep_dir(spec, args.out)
    stages = None if args.stage is None else [s.strip() for s in args.stage.split(",") if s.strip()]
    if args.dry_run:
        # The checks of a real sweep that write nothing (options, every run), then the chosen stages' runs.
        plan = plan_sweep(spec, out, workers=args.workers, stages=stages, launcher=args.launcher)
        for run in plan.selected():
            print(f"{run.stage}\t{run.id}\t{' '.join(f'{k}={v}' for k, v in run.overrides)}")
        return 0
    result = run_sweep(
        spec,
        out,
        workers=args.workers,
        data_dir=args.data_dir,
        echo=None if args.quiet else print,
        stages=stages,
        launcher=args.launcher,
    )
    print(
        f"sweep {spec.name}: {result.done}/{result.total} done ({result.skipped} already finished, "
        f"{result.executed} started), {len(result.failed)} failed -> {out}"
    )
    for run_id, error in result.failed.items():
        print(f"failed: {run_id}: {error}", file=sys.stderr)
    if args.report and result.done:
        from prunelab.experiments.report import write_report

        print(f"wrote {write_report([out], group_by=None)}")
    return 1 if result.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``prunelab demo``: the offline end-to-end demo of the published methods on the bundled digits."""
    from prunelab.experiments.demo import run_demo

    run_demo(Path(args.out), quiet=args.quiet, threads=args.threads)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``prunelab export SOURCE``: deployable files (BatchNorm folded, verified, timed) from a checkpoint."""
    from prunelab._io import ensure_writable_dir
    from prunelab.export import (
        SUFFIXES,
        check_format,
        default_export_path,
        export_checkpoint,
        report_path_for,
    )

    names = [f.strip() for value in (args.format or ["onnx"]) for f in value.split(",") if f.strip()]
    formats = list(dict.fromkeys(check_format(f) for f in names))
    if args.out and len(formats) > 1:
        raise ConfigError(
            f"--out names one file but {len(formats)} formats were asked for; give one --format with --out, "
            "or leave --out out to write each file next to the source"
        )
    # Where the files go is checked before any export work (a missing source is the export's error).
    if args.out and Path(args.out).is_dir():
        example = Path(args.out) / f"model{SUFFIXES[formats[0]]}"
        raise ConfigError(f"--out {args.out}: is a directory; name the file to write, e.g. --out {example}")
    if Path(args.source).exists():
        what, fix = ("--out", "choose another --out") if args.out else ("export folder", "pass --out FILE")
        targets = [Path(args.out)] if args.out else [default_export_path(args.source, f) for f in formats]
        for target in targets:
            ensure_writable_dir(target.parent, what, fix, for_file=target)
    for fmt in formats:
        report = export_checkpoint(
            args.source,
            args.out,
            fmt,
            fold_bn=not args.no_fold_bn,
            tolerance=args.tolerance,
            batch=args.batch,
            latency=not args.no_latency,
        )
        print(f"{report.summary_line()}; report {report_path_for(report.path, fmt)}")
    return 0


def _add_demo(sub: Any) -> None:
    """The ``prunelab demo`` subcommand."""
    from prunelab.experiments.demo import DEMO_SECONDS

    p = sub.add_parser(
        "demo",
        help=f"offline demo of the published methods on a small CNN (about {DEMO_SECONDS} s)",
        description="Offline, on the digits shipped with prunelab: train a small CNN, then (a) network "
        "slimming with verified channel surgery and the measured speed-up, (b) NN-relief, (c) interspace "
        "vs standard pruning at the same sparsity, (d) magnitude pruning as the baseline; print a table "
        f"and write report.md/report.html with plots. About {DEMO_SECONDS} s on a loaded 2-core machine "
        "with one thread; reruns replace the runs in --out.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.add_argument(
        "--threads",
        type=int,
        help="PyTorch CPU threads (default 1: the models are tiny, and more threads oversubscribe a shared machine)",
    )
    p.set_defaults(func=cmd_demo)


def _add_run(sub: Any) -> None:
    """The ``prunelab run`` subcommand."""
    p = sub.add_parser(
        "run",
        help="run one recipe",
        description="Validate and run a YAML recipe; the run "
        "directory gets config.yaml, summary.json, layers.csv, metrics.jsonl, checkpoint.pt, log.txt.",
    )
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set prune.sparsity=0.95 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: runs/<recipe>-<timestamp>)")
    p.add_argument("--data-dir", help="data root (default: $PRUNELAB_DATA or ~/.cache/prunelab)")
    p.add_argument(
        "--download", action="store_true", help="download missing datasets/weights (needs network)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its stage checkpoints (a finished one is left as it is)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run in --out (refused without this flag)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log every epoch's figures and each round's sparsity to TensorBoard, in --out/tensorboard "
        "(sets train.tensorboard; needs pip install 'prunelab[tensorboard]')",
    )
    p.set_defaults(func=cmd_run)


def _add_sweep(sub: Any) -> None:
    """The ``prunelab sweep`` subcommand."""
    p = sub.add_parser(
        "sweep",
        help="run a grid of recipes, resumably and in parallel",
        description="Expand a sweep file (base recipe + grid of dotted fields) into runs, validate them "
        "all, and run them N at a time (local worker processes, a Ray cluster or SLURM: --launcher) "
        "into SWEEP_DIR/runs/<run-id>, indexed in "
        "SWEEP_DIR/sweep.db. Restarting the same command skips finished runs and resumes the others.",
    )
    p.add_argument("sweep", help="sweep YAML file (*.sweep.yaml)")
    p.add_argument("--out", help="sweep directory (default: sweeps/<sweep name>)")
    p.add_argument("--workers", type=int, help="parallel runs (default: the sweep's workers)")
    p.add_argument(
        "--launcher",
        choices=("local", "ray", "slurm"),
        help="where runs execute (default: the sweep's launcher, else local); a cluster's options "
        "and each run's resources (cpus, gpus) come from the sweep file",
    )
    p.add_argument("--data-dir", help="data root for every run (default: the sweep's data_dir)")
    p.add_argument("--stage", help="comma-separated stages to run (default: all, in order)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs without running them")
    p.add_argument("--report", action="store_true", help="write report.md/report.html when done")
    p.add_argument("--quiet", action="store_true", help="print only the final line")
    p.set_defaults(func=cmd_sweep)


def _add_validate(sub: Any) -> None:
    """The ``prunelab validate`` subcommand."""
    p = sub.add_parser(
        "validate",
        help="check recipes without running them",
        description="Validate recipes, and sweep files (*.sweep.yaml) run by run, with every check a run "
        "makes before training: unknown keys, wrong types, out-of-range values, unknown names, model and "
        "data options, include/exclude patterns, the method's requirements; with --data-dir, the data "
        "and weights files. Every problem is reported as 'file: field.path: reason'; exit code 2 on any.",
    )
    p.add_argument("recipes", nargs="+", help="recipe YAML files, or sweep files (*.sweep.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override applied before validation")
    p.add_argument(
        "--data-dir", help="also check that the datasets and pretrained weights the recipes read are in DIR"
    )
    p.add_argument(
        "--check-data",
        action="store_true",
        help="also check datasets and weights in the default data root ($PRUNELAB_DATA or ~/.cache/prunelab)",
    )
    p.set_defaults(func=cmd_validate)


def _add_list(sub: Any) -> None:
    """The ``prunelab list`` subcommand."""
    p = sub.add_parser(
        "list",
        help="list the kinds of components, or the names of one kind",
        description="Without KIND: the kinds, one line each. With KIND: its names with one-line "
        "descriptions; 'recipes' lists the shipped recipes and sweeps, 'pretrained' says whether each "
        "weights file is present and where.",
    )
    p.add_argument("kind", nargs="?", choices=tuple(LIST_KINDS), help="what to list (default: the kinds)")
    p.add_argument("--dir", help="with recipes: the folder to list (default: the repository's recipes/)")
    p.add_argument(
        "--data-dir", help="with pretrained: the data root (default: $PRUNELAB_DATA or ~/.cache/prunelab)"
    )
    p.set_defaults(func=cmd_list)


def _add_report(sub: Any) -> None:
    """The ``prunelab report`` subcommand."""
    p = sub.add_parser(
        "report",
        help="write a markdown/HTML report over run directories or a sweep",
        description="Collect summary.json of each run (directories are searched recursively) "
        "into report.md and report.html: per-run and grouped tables (mean ± std over seeds) and plots "
        "of accuracy vs remaining parameters, effective MACs and measured latency.",
    )
    p.add_argument(
        "run_dirs", nargs="+", help="run directories, folders containing runs, or a sweep directory"
    )
    p.add_argument("--out", help="report file (default: <first RUN_DIR>/report.md)")
    p.add_argument(
        "--group-by",
        help="comma-separated fields that define a line/group: summary keys, dotted recipe fields "
        "(prune.options.scope) or sweep labels (init); default: method",
    )
    p.add_argument("--no-html", action="store_true", help="write only the markdown report")
    p.set_defaults(func=cmd_report)


def _add_export(sub: Any) -> None:
    """The ``prunelab export`` subcommand."""
    p = sub.add_parser(
        "export",
        help="write a deployable ONNX / TorchScript / torch.export file, verified and timed",
        description="Rebuild the model of a run directory or checkpoint.pt, fold its BatchNorms into the "
        "convolutions, export it, load the file back (ONNX Runtime for ONNX) and compare it with the "
        "PyTorch model on a seeded random batch; only a file within the tolerance is written. Its latency "
        "is measured on one thread next to the eager PyTorch model's; the report JSON goes next to the file.",
    )
    p.add_argument("source", help="run directory or prunelab checkpoint (checkpoint.pt)")
    p.add_argument(
        "--format",
        action="append",
        metavar="FORMAT",
        help="onnx (default), torchscript or torch-export; repeat or comma-separate for several",
    )
    p.add_argument(
        "--out",
        help="file to write (default: RUN_DIR/model.onnx, model.torchscript.pt or model.pt2; "
        "beside a checkpoint file: <name>.onnx, ...)",
    )
    p.add_argument("--no-fold-bn", action="store_true", help="export the BatchNorm layers unfolded")
    p.add_argument(
        "--batch", type=int, default=1, help="batch size of the check and the latency (default: 1)"
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="accepted max |diff| per unit of output: x the largest |output| when that exceeds 1 (default: 1e-4)",
    )
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``prunelab`` command."""
    parser = argparse.ArgumentParser(
        prog="prunelab",
        description="Prune convolutional networks and measure what the pruning bought.",
    )
    from prunelab._version import __version__

    parser.add_argument("--version", action="version", version=f"prunelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_demo(sub)
    _add_run(sub)
    _add_sweep(sub)
    _add_validate(sub)
    _add_list(sub)
    _add_report(sub)
    _add_export(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunelab`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (PrunelabError, OSError) as exc:
        line, code = error_line(exc)  # type: ignore[misc]  # never None for these two
        print(line, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("prunelab: interrupted", file=sys.stderr)
        return 130
