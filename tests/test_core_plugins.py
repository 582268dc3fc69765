"""Plugins: prunelab.registry.load_plugins loads an entry-point group once, wraps failures in ConfigError.

Each test writes a tiny installed distribution (a ``*.dist-info`` folder with ``entry_points.txt``) and
its module into a temporary folder put on ``sys.path``, which is all ``importlib.metadata`` looks at.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from prunelab.errors import ConfigError
from prunelab.registry import load_plugins


def _install(root: Path, dist: str, group: str, points: dict[str, str], modules: dict[str, str]) -> None:
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {value}" for name, value in points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(source)
    importlib.invalidate_caches()  # the import system caches folder listings


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))


def test_a_module_is_imported_and_a_callable_called_once_per_process(site: Path) -> None:
    group = f"prunelab.test_{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    # The plugin fills a registry of its own helper module, which the test then reads.
    seen = f"seen_{tag}"
    module = (
        f"from {seen} import SEEN\n"
        "SEEN.register('module')(object())\n"
        "def register():\n"
        "    SEEN.register('callable')(object())\n"
    )
    _install(
        site,
        f"plug_{tag}",
        group,
        {"mod": f"plug_{tag}", "fn": f"plug_{tag}:register"},
        {f"plug_{tag}": module, seen: "from prunelab.registry import Registry\nSEEN = Registry('test')\n"},
    )
    assert sorted(load_plugins(group)) == ["fn", "mod"]
    assert importlib.import_module(seen).SEEN.names() == ["callable", "module"]
    assert load_plugins(group) == []  # a second call registers nothing twice


def test_a_plugin_that_fails_to_import_is_a_config_error_naming_it_and_the_fix(site: Path) -> None:
    group = f"prunelab.test_{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    _install(
        site,
        f"broken_{tag}",
        group,
        {"broken": f"broken_{tag}"},
        {f"broken_{tag}": "import no_such_module\n"},
    )
    with pytest.raises(ConfigError) as info:
        load_plugins(group)
    message = str(info.value)
    assert f"plugin 'broken' (entry point group '{group}'" in message
    assert "no_such_module" in message and f"fix or uninstall the package 'broken_{tag}'" in message
    assert "\n" not in message


def test_a_criterion_plugin_is_registered_by_importing_the_criteria_package(tmp_path: Path) -> None:
    # A separate process, as a sweep worker is: the plugin must be found with no help from the caller.
    module = (
        "import torch\n"
        "from prunelab.criteria.registry import CRITERIA\n"
        "@CRITERIA.register('test_ones', help='All ones (a test plugin).')\n"
        "class Ones:\n"
        "    requires = frozenset()\n"
        "    def score(self, view, stats):\n"
        "        return torch.ones_like(view.value)\n"
    )
    _install(tmp_path, "ones_plugin", "prunelab.criteria", {"ones": "ones_plugin"}, {"ones_plugin": module})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    code = (
        "from torch import nn; import prunelab\n"
        "p = prunelab.prune(nn.Sequential(nn.Linear(4, 4)), 0.5, criterion='test_ones')\n"
        "print(p.sparsity())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "0.5"
    listed = subprocess.run(
        [sys.executable, "-m", "prunelab", "list", "criteria"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert any(line.split()[:2] == ["test_ones", "entry"] for line in listed.stdout.splitlines())
