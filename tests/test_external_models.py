"""Models from outside the zoo: ``package.module:callable``, ``torchvision:<name>`` and ``timm:<name>``.

The callable path runs everywhere (a model package written to a tmp dir on ``sys.path``). The torchvision
and timm tests run only where those are installed (the zoo virtualenv); where torchvision is absent, the
"not installed" message is checked instead.
"""

from __future__ import annotations

import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab.checkpoint import build_from_checkpoint
from prunelab.cli import main
from prunelab.errors import ConfigError
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import recipe_from_dict
from prunelab.models import build_model, check_model_name, is_model_name, model_options

HAS_TORCHVISION = find_spec("torchvision") is not None
HAS_TIMM = find_spec("timm") is not None

MODULE = '''
import torch
from torch import nn

COUNT = 3


class Net(nn.Module):
    """A class: takes num_classes only (no input_shape)."""

    def __init__(self, num_classes=10, hidden=16):
        super().__init__()
        layers = [nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def build(num_classes, input_shape, width=8):
    """A function taking both common arguments and one option."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def build_kw(**kwargs):
    """**kwargs: receives num_classes and input_shape too."""
    build_kw.seen = dict(kwargs)
    return nn.Linear(kwargs["input_shape"][0], kwargs["num_classes"])


def no_args():
    return nn.Linear(4, 2)


def not_a_module(num_classes=10):
    return {"num_classes": num_classes}


def raises_type_error(**kwargs):
    raise TypeError("__init__() got an unexpected keyword argument 'depth'")


class Factories:
    @staticmethod
    def tiny(num_classes=10):
        return nn.Linear(3, num_classes)
'''


@pytest.fixture
def mypkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``mypkg`` with models in ``mypkg.mod`` and a module that fails to import."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(textwrap.dedent(MODULE))
    (pkg / "broken.py").write_text("import does_not_exist_anywhere\n")
    (pkg / "crashes.py").write_text("raise RuntimeError('cuda driver too old')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


# --------------------------------------------------------------------------------------------- callables


def test_function_gets_num_classes_input_shape_and_kwargs(mypkg: Path) -> None:
    model = build_model("mypkg.mod:build", num_classes=7, input_shape=(1, 8, 8), width=4)
    assert model[0].in_channels == 1 and model[0].out_channels == 4
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    assert model_options("mypkg.mod:build") == ["width"]


def test_class_without_input_shape_and_attribute_paths(mypkg: Path) -> None:
    model = build_model("mypkg.mod:Net", num_classes=5, input_shape=(1, 8, 8), hidden=6)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    assert model_options("mypkg.mod:Net") == ["hidden"]
    assert build_model("mypkg.mod:Factories.tiny", num_classes=4).out_features == 4
    # A callable without either common argument is called with the recipe's kwargs only.
    assert build_model("mypkg.mod:no_args").out_features == 2


def test_var_kwargs_receive_both_common_arguments(mypkg: Path) -> None:
    model = build_model("mypkg.mod:build_kw", num_classes=3, input_shape=(2, 8, 8), extra=1)
    assert (model.in_features, model.out_features) == (2, 3)
    seen = sys.modules["mypkg.mod"].build_kw.seen
    assert seen == {"num_classes": 3, "input_shape": (2, 8, 8), "extra": 1}


def test_module_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The `prunelab` console script does not put the cwd on sys.path; the door looks there too.
    (tmp_path / "cwd_models_xyz.py").write_text(textwrap.dedent(MODULE))
    cwd = str(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", cwd)])
    monkeypatch.chdir(tmp_path)
    try:
        model = build_model("cwd_models_xyz:build", num_classes=3, input_shape=(1, 8, 8), width=2)
        assert model(torch.randn(1, 1, 8, 8)).shape == (1, 3)
        assert sys.path[-1] == cwd
    finally:
        sys.modules.pop("cwd_models_xyz", None)


def test_meta_device_build(mypkg: Path) -> None:
    with torch.device("meta"):
        model = build_model("mypkg.mod:build", width=4)
    assert next(model.parameters()).is_meta


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("mypkg.nope:build", {}, r"cannot import module 'mypkg\.nope' \(ModuleNotFoundError: .*PYTHONPATH"),
        ("nopkg_xyz.mod:build", {}, r"cannot import module 'nopkg_xyz\.mod' \(ModuleNotFoundError"),
        (
            "mypkg.broken:build",
            {},
            r"cannot import module 'mypkg\.broken' \(ModuleNotFoundError: .*does_not_exist",
        ),
        (
            "mypkg.crashes:build",
            {},
            r"cannot import module 'mypkg\.crashes' \(RuntimeError: cuda driver too old\)",
        ),
        ("mypkg.mod:biuld", {}, r"'mypkg\.mod' has no attribute 'biuld'; did you mean build"),
        ("mypkg.mod:Factories.huge", {}, r"'mypkg\.mod\.Factories' has no attribute 'huge'"),
        ("mypkg.mod:COUNT", {}, r"'mypkg\.mod\.COUNT' is a int, not a callable"),
        ("mypkg.mod:not_a_module", {}, r"returned a dict, not a torch\.nn\.Module"),
        ("mypkg.mod:build", {"depth": 3}, r"bad model\.kwargs .*'depth'.*valid options: width"),
        (
            "mypkg.mod:raises_type_error",
            {"depth": 3},
            r"rejected its options \['depth'\] \(TypeError: .*fix model",
        ),
        ("mypkg.mod:", {}, r"is incomplete; write torchvision:<name>"),
        ("my pkg:build", {}, r"is not package\.module:callable"),
    ],
)
def test_callable_errors_are_one_line_config_errors(
    mypkg: Path, name: str, kwargs: dict, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        build_model(name, num_classes=10, input_shape=(1, 8, 8), **kwargs)
    assert "\n" not in str(info.value)


def test_check_model_name(mypkg: Path) -> None:
    check_model_name("resnet20")
    check_model_name("mypkg.mod:build")
    assert is_model_name("mypkg.mod:Net") and not is_model_name("mypkg.mod:nothing")
    with pytest.raises(
        ConfigError, match=r"unknown model 'resnet2'; did you mean .*package\.module:callable"
    ):
        check_model_name("resnet2")
    with pytest.raises(ConfigError, match="has no attribute"):
        check_model_name("mypkg.mod:nothing")


# ------------------------------------------------------------------------------------- recipes and runs

FAST = {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}


def _recipe(model: dict) -> object:
    raw = {
        "name": "ext",
        "seed": 0,
        "model": model,
        "data": {"name": "digits"},
        "train": FAST,
        "finetune": FAST,
        "prune": {"method": "magnitude", "sparsity": 0.5},
        "eval": {"latency_batch_sizes": [1], "latency_repeats": 1},
    }
    return recipe_from_dict(raw)


def test_run_recipe_with_a_user_model(mypkg: Path, tmp_path: Path) -> None:
    recipe = _recipe({"name": "mypkg.mod:build", "kwargs": {"width": 4}})
    summary = run_recipe(recipe, tmp_path / "run", echo=None)
    assert summary["model"] == "mypkg.mod:build"
    assert summary["targeted_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert 0.0 <= summary["accuracy"] <= 1.0
    # The checkpoint names the model the same way, so it rebuilds through the same door.
    model = build_from_checkpoint(tmp_path / "run")
    assert model[0].out_channels == 4
    model.eval()
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_recipe_validation_reports_external_errors(mypkg: Path) -> None:
    _recipe({"name": "mypkg.mod:build"})
    with pytest.raises(ConfigError, match=r"model\.name: .*has no attribute 'biuld'"):
        _recipe({"name": "mypkg.mod:biuld"})
    with pytest.raises(ConfigError, match=r"model\.kwargs: .*'depth'"):
        _recipe({"name": "mypkg.mod:build", "kwargs": {"depth": 2}})


def test_list_models_shows_the_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "package.module:callable" in out
    for library, present in (("torchvision", HAS_TORCHVISION), ("timm", HAS_TIMM)):
        line = next(line for line in out.splitlines() if line.startswith(f"{library}:<name>"))
        if present:
            assert "installed" in line and " models" in line and "not installed" not in line
        else:
            assert f"not installed (pip install {library})" in line


# ------------------------------------------------------------------------------------- torchvision, timm


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_torchvision_not_installed_message() -> None:
    with pytest.raises(
        ConfigError, match=r"^model source 'torchvision' is not installed; pip install torchvision$"
    ):
        build_model("torchvision:resnet18")


@pytest.mark.skipif(HAS_TIMM, reason="timm is installed")
def test_timm_not_installed_message() -> None:
    with pytest.raises(ConfigError, match=r"^model source 'timm' is not installed; pip install timm$"):
        build_model("timm:resnet18")


needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("torchvision:resnet18", marks=needs_torchvision),
        pytest.param("timm:resnet18", marks=needs_timm),
    ],
)
def test_library_resnet18_builds_and_runs(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_shape=(3, 32, 32))
    assert isinstance(model, nn.Module)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@needs_timm
def test_timm_takes_in_chans_from_the_input_shape() -> None:
    model = build_model("timm:resnet18", num_classes=4, input_shape=(1, 32, 32))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 4)


@needs_torchvision
def test_torchvision_kwargs_and_errors() -> None:
    model = build_model("torchvision:mobilenet_v2", num_classes=3, width_mult=0.5)
    assert model.classifier[-1].out_features == 3
    with pytest.raises(
        ConfigError, match=r"unknown torchvision model 'resnet19'; did you mean torchvision:resnet1"
    ):
        build_model("torchvision:resnet19")
    with pytest.raises(ConfigError, match=r"rejected its options \['depth'\] \(TypeError"):
        build_model("torchvision:resnet18", depth=3)
    with pytest.raises(ConfigError, match=r"may not set 'weights'; load weights from a local file"):
        build_model("torchvision:resnet18", weights="DEFAULT")
    with pytest.raises(ConfigError, match=r"takes 3-channel images, the data has 1"):
        build_model("torchvision:resnet18", input_shape=(1, 8, 8))


@needs_timm
def test_timm_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet19'; did you mean timm:resnet1"):
        build_model("timm:resnet19")
    with pytest.raises(ConfigError, match=r"may not set 'pretrained'"):
        build_model("timm:resnet18", pretrained=True)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("torchvision:resnet18", marks=needs_torchvision),
        pytest.param("timm:resnet18", marks=needs_timm),
    ],
)
def test_recipe_naming_a_library_model_validates(name: str) -> None:
    recipe = _recipe({"name": name})
    assert recipe.model.name == name
    with pytest.raises(ConfigError, match=r"model\.name: unknown (torchvision|timm) model 'resnet19'"):
        _recipe({"name": name.replace("18", "19")})
