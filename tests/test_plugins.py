"""Plugins through the real entry-point mechanism: the example Taylor package in ``tests/plugins``.

``tests/plugins`` holds an importable package, ``prunelab_taylor_example``, and beside it its
``prunelab_taylor_example-0.1.dist-info`` (``METADATA`` + ``entry_points.txt``), which is what ``pip
install`` leaves behind. With the folder on ``PYTHONPATH``, :func:`importlib.metadata.entry_points` finds the
distribution and :func:`prunelab.registry.load_plugins` registers its criterion ``taylor`` (entry and
group level) and its method ``taylor_one_shot``, with no file of ``src/`` touched.

Everything that needs the plugin runs ``prunelab`` in a subprocess whose environment names the folder,
so this test process's registries never see it; the failure of a broken plugin is checked in-process
under a private entry-point group.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from prunelab.errors import ConfigError
from prunelab.registry import load_plugins

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGINS = REPO_ROOT / "tests" / "plugins"

TINY = {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}


def _recipe(prune: dict[str, Any]) -> dict[str, Any]:
    """A seconds-long digits recipe (small subsets, one epoch per stage, no latency timing)."""
    return {
        "name": "plugin",
        "seed": 0,
        "model": {"name": "small_cnn"},
        "data": {"name": "digits", "val_fraction": 0.0, "train_subset": 400, "test_subset": 200},
        "train": TINY,
        "prune": prune,
        "finetune": TINY,
        "eval": {"latency": False},
    }


PLUGIN_PRUNE = {"method": "taylor_one_shot", "sparsity": 0.5, "options": {"calibration_samples": 128}}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _env(plugins: bool) -> dict[str, str]:
    """This process's environment, one thread, with ``tests/plugins`` first on ``PYTHONPATH`` or not at all."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != PLUGINS]
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), *paths] if plugins else paths)
    return env


def _prunelab(
    args: list[str], cwd: Path, *, plugins: bool = True, extra_path: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``prunelab`` command.

    ``plugins`` puts ``tests/plugins`` on ``PYTHONPATH``; ``extra_path`` adds another folder before it.
    """
    env = _env(plugins)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env["PYTHONPATH"]) if p)
    script = Path(sys.executable).with_name("prunelab")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "prunelab"]
    # cwd is a temporary folder, never tests/plugins: the plugin must come from PYTHONPATH alone.
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def _line(listing: str, name: str) -> str:
    lines = [line for line in listing.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, f"{name!r} listed {len(lines)} times in:\n{listing}"
    return lines[0]


def test_the_dist_info_declares_the_entry_points() -> None:
    # What importlib.metadata reads from the folder (read only: nothing is imported or registered here).
    (dist,) = importlib.metadata.distributions(path=[str(PLUGINS)])
    assert (dist.metadata["Name"], dist.version) == ("prunelab_taylor_example", "0.1")
    points = {(p.group, p.name, p.value) for p in dist.entry_points}
    assert points == {
        ("prunelab.criteria", "taylor", "prunelab_taylor_example.taylor"),
        ("prunelab.methods", "taylor_one_shot", "prunelab_taylor_example.method"),
    }
    # What makes the package a plugin is committed beside it: no .gitignore rule may drop it.
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    files = [
        str(PLUGINS / "prunelab_taylor_example-0.1.dist-info" / name)
        for name in ("METADATA", "entry_points.txt")
    ]
    check = subprocess.run(
        [git, "check-ignore", *files], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if check.returncode == 128 and "not a git repository" in check.stderr:
        pytest.skip("not a git checkout")
    # Exit code 1: none of the paths is ignored; 0 lists the ignored ones.
    assert check.returncode == 1, f"ignored by git, un-ignore them: {check.stdout or check.stderr}"


def test_list_shows_the_plugin_criterion_at_both_levels_and_its_method(tmp_path: Path) -> None:
    criteria = _ok(_prunelab(["list", "criteria"], tmp_path))
    taylor = _line(criteria, "taylor")
    assert "entry + group" in taylor and "Molchanov" in taylor
    # The built-ins are still there, once each.
    assert "entry" in _line(criteria, "magnitude") and "group" in _line(criteria, "l1_filter")
    methods = _ok(_prunelab(["list", "methods"], tmp_path))
    assert "Taylor" in _line(methods, "taylor_one_shot")


def _validate(
    tmp_path: Path, good: dict[str, dict[str, Any]], bad: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """``prunelab validate`` over ``good`` and ``bad`` recipes in one process; ``{bad name: its error}``.

    Every good recipe must print ``ok: <path>``, every bad one exactly one error line naming its file.
    """
    paths = {name: _write(tmp_path / name, raw) for name, raw in {**good, **bad}.items()}
    proc = _prunelab(["validate", *map(str, paths.values())], tmp_path)
    assert proc.returncode == (2 if bad else 0), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("ok: ")) == sorted(
        f"ok: {paths[name]}" for name in good
    ), proc.stderr
    errors = proc.stderr.strip().splitlines() if bad else []
    assert len(errors) == len(bad), proc.stderr
    found: dict[str, str] = {}
    for name in bad:
        lines = [line for line in errors if str(paths[name]) in line]
        assert len(lines) == 1, (name, proc.stderr)
        found[name] = lines[0]
    return found


def test_validate_accepts_the_plugin_method_and_taylor_as_an_entry_criterion(tmp_path: Path) -> None:
    good = {
        "plugin_method.yaml": _recipe(PLUGIN_PRUNE),
        # The plugin's criterion at the entry level, in a built-in unstructured method.
        "entry_level.yaml": _recipe(
            {"method": "magnitude", "sparsity": 0.5, "options": {"criterion": "taylor"}}
        ),
        # The plugin's method with its mask options and a Taylor option passed through.
        "options.yaml": _recipe(
            {
                "method": "taylor_one_shot",
                "sparsity": 0.5,
                "options": {"granularity": "filter", "scope": "layer", "criterion_kwargs": {"power": 2}},
            }
        ),
    }
    # The plugin's options are checked like a built-in's: a group-only criterion is a one-line error.
    bad = {
        "group_only.yaml": _recipe(
            {"method": "taylor_one_shot", "sparsity": 0.5, "options": {"criterion": "bn_scale"}}
        ),
        "unknown_option.yaml": _recipe(
            {"method": "taylor_one_shot", "sparsity": 0.5, "options": {"calibration_samplez": 64}}
        ),
    }
    errors = _validate(tmp_path, good, bad)
    assert "bn_scale" in errors["group_only.yaml"] and "entry" in errors["group_only.yaml"]
    assert "calibration_samplez" in errors["unknown_option.yaml"]


def test_validate_accepts_taylor_as_the_group_criterion_of_a_structured_method(tmp_path: Path) -> None:
    good = {
        "group_level.yaml": _recipe(
            {"method": "l1_filter", "sparsity": 0.3, "options": {"criterion": "taylor"}}
        )
    }
    # The control: the structured method does check the level, so accepting taylor means something.
    bad = {
        "entry_only.yaml": _recipe(
            {"method": "l1_filter", "sparsity": 0.3, "options": {"criterion": "magnitude"}}
        )
    }
    errors = _validate(tmp_path, good, bad)
    assert "magnitude" in errors["entry_only.yaml"] and "group" in errors["entry_only.yaml"]


def test_run_of_the_plugin_method_writes_its_summary_field(tmp_path: Path) -> None:
    recipe = _write(tmp_path / "taylor.yaml", _recipe(PLUGIN_PRUNE))
    out = tmp_path / "run"
    _ok(_prunelab(["run", str(recipe), "--out", str(out), "--quiet"], tmp_path))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "taylor_one_shot"
    assert summary["targeted_sparsity"] == pytest.approx(0.5, abs=1e-3)
    own = summary["taylor_one_shot"]
    assert own["criterion"] == "taylor" and own["calibration_samples"] == 128
    assert own["calibration_loss"] > 0
    # Pruning by Taylor importance keeps the most important half: far more than half of the importance
    # (a random or inverted ranking would keep about half or less).
    assert 0.5 + 0.1 < own["importance_kept"] <= 1.0
    rows = list(csv.DictReader((out / "rounds.csv").read_text().splitlines()))
    assert len(rows) == 1 and rows[0]["round"] == "1"
    assert float(rows[0]["importance_kept"]) == pytest.approx(own["importance_kept"], abs=1e-6)
    assert float(rows[0]["sparsity"]) == pytest.approx(0.5, abs=1e-3)


def test_run_of_a_structured_method_with_taylor_as_its_group_criterion(tmp_path: Path) -> None:
    prune = {
        "method": "l1_filter",
        "sparsity": 0.3,
        "options": {"criterion": "taylor", "speed_batch_sizes": []},
    }
    recipe = _write(tmp_path / "structured.yaml", _recipe(prune))
    out = tmp_path / "run"
    _ok(_prunelab(["run", str(recipe), "--out", str(out), "--quiet"], tmp_path))
    summary = json.loads((out / "summary.json").read_text())
    # Taylor's group level ran (it refuses to score groups it did not fit on calibration batches) and the
    # channels it ranked lowest were removed physically: fewer parameters, not just zeros.
    structured = summary["structured"]
    assert structured["criterion"] == "taylor"
    assert structured["channels_removed_share"] == pytest.approx(0.3, abs=0.05)
    assert summary["params_total"] < summary["params_dense_total"]
    assert summary["params_nonzero"] == summary["params_total"]


def test_sweep_of_the_plugin_method_in_worker_processes(tmp_path: Path) -> None:
    sweep = _write(
        tmp_path / "taylor.sweep.yaml",
        {"name": "taylor", "base": _recipe(PLUGIN_PRUNE), "grid": {"prune.sparsity": [0.3, 0.6]}},
    )
    out = tmp_path / "sweep"
    proc = _prunelab(["sweep", str(sweep), "--workers", "2", "--out", str(out), "--quiet"], tmp_path)
    assert "2/2 done" in _ok(proc)
    summaries = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/summary.json"))]
    assert len(summaries) == 2
    # Each worker process loaded the plugin: its driver ran there and wrote its own summary field.
    assert sorted(s["targeted_sparsity"] for s in summaries) == pytest.approx([0.3, 0.6], abs=1e-3)
    assert all(s["method"] == "taylor_one_shot" and "taylor_one_shot" in s for s in summaries)


def test_without_the_plugin_the_recipe_is_a_one_line_error(tmp_path: Path) -> None:
    recipe = _write(tmp_path / "taylor.yaml", _recipe(PLUGIN_PRUNE))
    proc = _prunelab(["validate", str(recipe)], tmp_path, plugins=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "prune.method" in lines[0] and "unknown method 'taylor_one_shot'" in lines[0]
    # And the criterion is not there either: it comes from the plugin alone.
    listing = _ok(_prunelab(["list", "criteria"], tmp_path, plugins=False))
    assert "taylor" not in listing.split()


# --------------------------------------------------------------------------------------------------
# The Taylor scores themselves, against an independent autograd computation (in a subprocess, so the
# plugin's registrations never reach this process's registries).

_SCORE_CHECK = r"""
import json, torch
from torch import nn
import torch.nn.functional as F
from prunelab.core.criterion import TargetView, score_groups
from prunelab.core.targets import find_targets
from prunelab.criteria import CRITERIA, levels_of
from prunelab.surgery import ChannelGraph
from prunelab_taylor_example.taylor import Taylor

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c1, self.b1 = nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.c2, self.b2 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
    def forward(self, x):
        x = torch.relu(self.b0(self.c0(x)))
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return self.fc(torch.relu(x + y).mean(dim=(2, 3)))

torch.manual_seed(0)
model = Residual()
for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
        with torch.no_grad():
            m.running_mean.normal_(); m.running_var.uniform_(0.5, 1.5)
model.train()
x, y = torch.randn(12, 2, 6, 6), torch.randint(0, 5, (12,))
batches = [(x[:5], y[:5]), (x[5:], y[5:])]  # unequal sizes: the mean must weigh samples, not batches
bn_before = model.b1.running_mean.clone()

# Independent reference: one eval-mode backward of the mean loss over all samples.
ref = Residual(); ref.load_state_dict(model.state_dict()); ref.eval()
F.cross_entropy(ref(x), y).backward()
grads = {n: p.grad for n, p in ref.named_parameters()}
params = dict(ref.named_parameters())

out = {"levels": list(levels_of("taylor")), "registered": CRITERIA.get("taylor").__name__}
taylor = Taylor()
views = []
for t in find_targets(model):
    w = getattr(t.module, t.param)
    views.append(TargetView(t, w.detach(), torch.ones_like(w, dtype=torch.bool)))
taylor.fit(views, {"model": model, "batches": batches})
out["entry_err"] = max(
    float((taylor.score(v, {}) - (params[v.fqn] * grads[v.fqn]).abs().detach()).abs().max()) for v in views
)
out["entry_scale"] = max(float((params[v.fqn] * grads[v.fqn]).abs().detach().max()) for v in views)
out["still_training"] = model.training
out["bn_unchanged"] = bool(torch.equal(model.b1.running_mean, bn_before))

def per_filter(name):
    w, g = params[name + ".weight"], grads[name + ".weight"]
    return (w * g).reshape(w.shape[0], -1).sum(dim=1).abs().detach()

graph = ChannelGraph(model.eval(), (2, 6, 6))
model.train()
groups = {g.name: g for g in graph.groups}
for reduction in ("sum", "max"):
    scores = score_groups(Taylor(reduction=reduction), graph.groups, model, {"model": model, "batches": batches})
    stream = next(n for n, g in groups.items() if {m.name for m in g.producers()} == {"c0", "c2"})
    pair = torch.stack([per_filter("c0"), per_filter("c2")])
    expected = pair.sum(0) if reduction == "sum" else pair.max(0).values
    out[reduction + "_stream_err"] = float((scores[stream] - expected).abs().max())
    inner = next(n for n, g in groups.items() if {m.name for m in g.producers()} == {"c1"})
    out[reduction + "_inner_err"] = float((scores[inner] - per_filter("c1")).abs().max())
out["group_scale"] = max(float(per_filter(n).max()) for n in ("c0", "c1", "c2"))
print(json.dumps(out))
"""


def test_taylor_scores_equal_an_independent_autograd_computation(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCORE_CHECK],
        check=False,
        cwd=tmp_path,
        env=_env(plugins=True),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["levels"] == ["entry", "group"] and out["registered"] == "Taylor"
    # Entry level |w·g|, with g of the mean loss over both batches, in eval mode.
    assert out["entry_scale"] > 0 and out["entry_err"] <= 1e-5 * out["entry_scale"]
    # Scoring leaves the model as it was: mode and BN running statistics.
    assert out["still_training"] and out["bn_unchanged"]
    # Group level: |Σ w·g| per filter; the residual stream sums (or maxes) its two producers' filters.
    assert out["group_scale"] > 0
    for key in ("sum_stream_err", "sum_inner_err", "max_stream_err", "max_inner_err"):
        assert out[key] <= 1e-5 * out["group_scale"], (key, out)


def test_the_plugin_criterion_passes_the_criterion_contract(tmp_path: Path) -> None:
    # tests/test_core_criteria.py parametrises over the registry; with the plugin on the path its contract
    # (standard statistics only, shapes, signs, determinism, at both levels, real statistics) runs on taylor.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "taylor", "-rs"]
        # Its own temporary root: the inner session must not prune this session's numbered folders.
        + [f"--basetemp={tmp_path / 'inner'}", str(REPO_ROOT / "tests" / "test_core_criteria.py")],
        cwd=REPO_ROOT,
        env=_env(plugins=True),
        capture_output=True,
        text=True,
        timeout=1800,  # only a hang takes this long; speed is measured in benchmarks
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 6 and "skipped" not in summary and "failed" not in summary, summary


# --------------------------------------------------------------------------------------------------
# load_plugins itself, in-process, under a private group (the real registries are not touched); the rest of
# its behaviour (modules, callables, once per process) is tested in tests/test_core_plugins.py.


def _dist_info(root: Path, dist: str, group: str, entries: dict[str, str]) -> None:
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")


def test_a_broken_plugin_is_a_config_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = f"prunelab.tests_broken_{uuid.uuid4().hex[:8]}"  # each entry point is tried once per process
    (tmp_path / "broken_plugin_module.py").write_text("raise RuntimeError('the plugin is broken')\n")
    _dist_info(tmp_path, "broken_plugin_dist", group, {"broken": "broken_plugin_module"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_plugins(group)
    message = str(info.value)
    assert "'broken'" in message and group in message and "broken_plugin_dist" in message
    assert "RuntimeError: the plugin is broken" in message
    assert "\n" not in message
    # Reported once: the failed entry point is not retried (it would re-run registrations that succeeded).
    assert load_plugins(group) == []


def test_a_broken_plugin_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    # A criterion plugin that raises on import, in the real group, seen by a real prunelab process.
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_criterion_module.py").write_text("raise RuntimeError('the plugin is broken')\n")
    _dist_info(site, "broken_criterion_dist", "prunelab.criteria", {"broken": "broken_criterion_module"})
    proc = _prunelab(["list", "criteria"], tmp_path, plugins=False, extra_path=site)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("prunelab: error: plugin 'broken' (entry point group 'prunelab.criteria'")
    assert "RuntimeError: the plugin is broken" in line and "'broken_criterion_dist'" in line
