"""Bad recipes: every one fails at validation (and ``run`` fails the same way before it trains), with one
line per problem naming the field and the fix, exit code 2, and nothing written.

``prunelab validate`` reports every problem of a file at once; ``prunelab run`` prints the first and
how many more there are.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_input.conftest import TINY_RECIPE, assert_one_line_error, cli, tree

BASE = "model: {name: small_cnn}\ndata: {name: digits}\ntrain: {epochs: 1}\neval: {latency: false}\n"


def _with(prune: str, base: str = BASE) -> str:
    return base + f"prune: {prune}\n"


#: (id, recipe text, words the one error line must contain)
BAD_RECIPES = [
    ("name-parent", "name: ../../x\n" + _with("{method: magnitude}"), ["name", "not a valid name"]),
    ("name-absolute", "name: /tmp/x\n" + _with("{method: magnitude}"), ["name", "one path component"]),
    ("name-slash", "name: a/b\n" + _with("{method: magnitude}"), ["name"]),
    ("name-hidden", "name: .hidden\n" + _with("{method: magnitude}"), ["name"]),
    ("name-empty", "name: ''\n" + _with("{method: magnitude}"), ["name"]),
    ("name-not-string", "name: [a]\n" + _with("{method: magnitude}"), ["name", "string"]),
    ("top-level-list", "- model\n- data\n", ["top level"]),
    ("unknown-top-key", "modle: {name: small_cnn}\n", ["modle", "did you mean 'model'"]),
    ("unknown-section-key", "model: {name: small_cnn, widht: 2}\ndata: {name: digits}\n", ["model.widht"]),
    ("yaml-syntax", "model: {name: small_cnn\n", ["fix the YAML syntax"]),
    (
        "eval-batch-zero",
        BASE.replace("{latency: false}", "{latency_batch_sizes: [0]}") + "prune: {method: magnitude}\n",
        ["eval.latency_batch_sizes", "positive"],
    ),
    (
        "eval-repeats-zero",
        BASE.replace("{latency: false}", "{latency_repeats: 0}") + "prune: {method: magnitude}\n",
        ["eval.latency_repeats"],
    ),
    (
        "eval-batch-size-zero",
        BASE.replace("{latency: false}", "{batch_size: 0}") + "prune: {method: magnitude}\n",
        ["eval.batch_size"],
    ),
    (
        "eval-empty-batch-sizes",
        BASE.replace("{latency: false}", "{latency_batch_sizes: []}") + "prune: {method: magnitude}\n",
        ["eval.latency_batch_sizes", "empty"],
    ),
    (
        "criterion-kwargs-entry",
        _with("{method: magnitude, options: {criterion_kwargs: {q: 2}}}"),
        ["prune.options.criterion", "bad options"],
    ),
    (
        "criterion-kwargs-group",
        _with("{method: l1_filter, sparsity: 0.3, options: {criterion_kwargs: {foo: 1}}}"),
        ["prune.options.criterion", "bad options"],
    ),
    ("criterion-wrong-level", _with("{method: magnitude, options: {criterion: bn_scale}}"), ["bn_scale"]),
    (
        "include-matches-nothing",
        _with("{method: magnitude, include: ['featurs.*']}"),
        ["prune.include[0]", "matches no module"],
    ),
    (
        "exclude-matches-nothing",
        _with("{method: magnitude, exclude: [classifer]}"),
        ["prune.exclude[0]", "matches no module"],
    ),
    (
        "slimming-without-bn",
        BASE.replace("small_cnn", "lenet300_100") + "prune: {method: network_slimming}\n",
        ["no affine BatchNorm"],
    ),
    (
        "proximal-without-bn",
        BASE.replace("small_cnn", "lenet300_100") + "prune: {method: proximal_slimming}\n",
        ["no affine BatchNorm"],
    ),
    (
        "bn-scale-structured-without-bn",
        BASE.replace("small_cnn", "lenet5") + "prune: {method: l1_filter, options: {criterion: bn_scale}}\n",
        ["no affine BatchNorm"],
    ),
    (
        "interspace-no-conv",
        BASE.replace("small_cnn", "lenet300_100")
        + "prune: {method: magnitude, reparam: {name: interspace}}\n",
        ["prune.reparam.name", "KxK convolution"],
    ),
    (
        "interspace-filter-granularity",
        _with("{method: magnitude, options: {granularity: filter}, reparam: {name: interspace}}"),
        ["prune.options.granularity", "element"],
    ),
    ("sparsity-nan", _with("{method: magnitude, sparsity: .nan}"), ["prune.sparsity", "finite"]),
    (
        "lr-inf",
        BASE.replace("{epochs: 1}", "{epochs: 1, lr: .inf}") + "prune: {method: magnitude}\n",
        ["train.lr", "finite"],
    ),
    ("sparsity-one", _with("{method: magnitude, sparsity: 1.0}"), ["sparsity", "[0, 1)"]),
    ("field-not-read", _with("{method: relief, sparsity: 0.5}"), ["prune.sparsity", "does not read"]),
    ("moved-key", _with("{method: magnitude, criterion: magnitude}"), ["prune.criterion", "moved"]),
    ("unknown-method", _with("{method: magnitud}"), ["prune.method", "magnitude"]),
    (
        "dense-with-finetune",
        _with("{method: dense}") + "finetune: {epochs: 2}\n",
        ["finetune.epochs", "never fine-tunes"],
    ),
    ("agp-no-finetune", _with("{method: agp, sparsity: 0.5}"), ["finetune.epochs", "agp"]),
    (
        "model-kwargs-unknown",
        BASE.replace("{name: small_cnn}", "{name: small_cnn, kwargs: {depth: 3}}")
        + "prune: {method: magnitude}\n",
        ["model.kwargs"],
    ),
    (
        "model-kwargs-reserved",
        BASE.replace("{name: small_cnn}", "{name: small_cnn, kwargs: {num_classes: 3}}")
        + "prune: {method: magnitude}\n",
        ["model.kwargs.num_classes"],
    ),
    (
        "model-unknown",
        BASE.replace("small_cnn", "resnet1000") + "prune: {method: magnitude}\n",
        ["model.name"],
    ),
    (
        "init-missing-file",
        BASE.replace("{name: small_cnn}", "{name: small_cnn, init: nowhere/ckpt.pt}")
        + "prune: {method: magnitude}\n",
        ["model.init", "check the path"],
    ),
    (
        "pretrained-unknown",
        BASE.replace("{name: small_cnn}", "{name: small_cnn, init: pretrained, pretrained: nope}")
        + "prune: {method: magnitude}\n",
        ["model.pretrained"],
    ),
    (
        "pretrained-missing-name",
        BASE.replace("{name: small_cnn}", "{name: small_cnn, init: pretrained}")
        + "prune: {method: magnitude}\n",
        ["model.pretrained", "required"],
    ),
    (
        "head-unknown",
        BASE.replace("{name: small_cnn}", "{name: small_cnn, head: clasifier}")
        + "prune: {method: magnitude}\n",
        ["head"],
    ),
    ("device-unknown", "device: tpu\n" + _with("{method: magnitude}"), ["device"]),
    (
        "data-unknown",
        BASE.replace("digits", "digts") + "prune: {method: magnitude}\n",
        ["data.name", "digits"],
    ),
    (
        "data-val-fraction",
        BASE.replace("{name: digits}", "{name: digits, val_fraction: 1.0}") + "prune: {method: magnitude}\n",
        ["data.val_fraction"],
    ),
    (
        "data-kwargs-unknown",
        BASE.replace("{name: digits}", "{name: digits, kwargs: {flatten: true}}")
        + "prune: {method: magnitude}\n",
        ["data.kwargs.flatten"],
    ),
    (
        "epochs-float",
        BASE.replace("{epochs: 1}", "{epochs: 1.5}") + "prune: {method: magnitude}\n",
        ["train.epochs", "integer"],
    ),
    (
        "epochs-bool",
        BASE.replace("{epochs: 1}", "{epochs: true}") + "prune: {method: magnitude}\n",
        ["train.epochs", "integer"],
    ),
    (
        "lr-negative",
        BASE.replace("{epochs: 1}", "{epochs: 1, lr: -0.1}") + "prune: {method: magnitude}\n",
        ["lr"],
    ),
    (
        "optimizer-unknown",
        BASE.replace("{epochs: 1}", "{epochs: 1, optimizer: adamm}") + "prune: {method: magnitude}\n",
        ["train.optimizer", "adam"],
    ),
    ("prune-not-mapping", BASE + "prune: magnitude\n", ["prune", "mapping"]),
    ("options-not-mapping", _with("{method: magnitude, options: [1]}"), ["prune.options", "mapping"]),
    ("min-keep-negative", _with("{method: magnitude, min_keep: -1}"), ["min_keep"]),
    (
        "alias-bomb-in-kwargs",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        + BASE.replace("{name: digits}", "{name: digits, kwargs: {x: *f}}")
        + "prune: {method: magnitude}\n",
        ["aliases expand", "100000"],
    ),
]


@pytest.mark.parametrize("text,needles", [pytest.param(t, n, id=i) for i, t, n in BAD_RECIPES])
def test_bad_recipe_fails_validate_and_run_before_training(
    text: str, needles: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = workdir / "bad.yaml"
    recipe.write_text(text)
    before = tree(workdir)
    code, out, err = cli(["validate", recipe], capsys)
    assert_one_line_error(code, err, *needles, exit_code=2)
    assert "ok:" not in out
    code, _, err = cli(["run", recipe, "--quiet"], capsys)
    assert_one_line_error(code, err, *needles, exit_code=2)
    assert tree(workdir) == before  # no run directory, no config.yaml, nothing


@pytest.mark.parametrize(
    "content,needles",
    [
        pytest.param(b"", ["empty"], id="empty-file"),
        pytest.param(b"{}\n", ["empty"], id="empty-mapping"),
        pytest.param(b"# only a comment\n", ["empty"], id="only-comments"),
        pytest.param(b"name: caf\xe9\n", ["not UTF-8", "0xe9"], id="latin-1"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["binary"], id="binary"),
        pytest.param(b"a: &a [*a]\n", ["aliases expand"], id="recursive-alias"),
    ],
)
def test_unreadable_recipe_file(
    content: bytes, needles: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = workdir / "bad.yaml"
    recipe.write_bytes(content)
    for command in ("validate", "run"):
        code, _, err = cli([command, recipe], capsys)
        assert_one_line_error(code, err, *needles, exit_code=2)
    assert tree(workdir) == {"bad.yaml": tree(workdir)["bad.yaml"]}


def test_missing_recipe_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["run", workdir / "nope.yaml"], capsys)
    assert_one_line_error(code, err, "not found", exit_code=2)


def test_validate_reports_every_error_of_a_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = workdir / "five.yaml"
    recipe.write_text(
        "modle: {name: small_cnn}\n"  # 1: unknown key
        "data: {name: digits, val_fraction: 2.0}\n"  # 2: out of range
        "train: {epochs: 1.5, optimizer: adamm}\n"  # 3 and 4: two mistakes in one section
        "eval: {latency_repeats: 0}\n"  # 5
        "prune: {method: magnitude}\n"
    )
    code, _, err = cli(["validate", recipe], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 5, lines
    assert all(line.startswith(f"prunelab: error: {recipe}: ") for line in lines)
    for field in ("modle", "data.val_fraction", "train.optimizer", "eval.latency_repeats"):
        assert any(field in line for line in lines), (field, lines)
    # run stops at the same point with one line that says how many more there are
    code, _, err = cli(["run", recipe], capsys)
    assert_one_line_error(code, err, "and 4 more errors", "prunelab validate", exit_code=2)


def test_validate_reports_errors_after_the_sections_parse(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = workdir / "three.yaml"
    recipe.write_text(
        BASE.replace("digits", "digts").replace("{name: small_cnn}", "{name: small_cnn, init: gone.pt}")
        + "prune: {method: magnitude, exclude: [nothing_here]}\n"
    )
    code, _, err = cli(["validate", recipe], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 3, lines
    assert any("data.name" in x for x in lines) and any("model.init" in x for x in lines)
    assert any("prune.exclude[0]" in x for x in lines)


def test_several_files_are_all_checked(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = workdir / "good.yaml", workdir / "bad.yaml"
    good.write_text(TINY_RECIPE)
    bad.write_text(_with("{method: magnitude, sparsity: 2}"))
    code, out, err = cli(["validate", bad, good], capsys)
    assert code == 2 and f"ok: {good}" in out
    assert_one_line_error(code, err, "sparsity")


def test_set_override_errors(tiny_recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for override, needle in [
        ("prune.sparsity", "expected key.path=value"),
        ("prune.sparsity=2", "prune.sparsity"),
        ("train.nope=1", "train.nope"),
        ("name=../escape", "not a valid name"),
        ("model.name.sub=1", "is not a section"),
    ]:
        code, _, err = cli(["run", tiny_recipe, "--set", override], capsys)
        assert_one_line_error(code, err, needle, exit_code=2)
    assert not Path("runs").exists()


def test_recipe_name_from_an_unsafe_file_name(workdir: Path) -> None:
    from prunelab.experiments.schema import load_recipe

    path = workdir / "my recipe (v2).yaml"
    path.write_text(_with("{method: magnitude}"))
    assert load_recipe(path).name == "my-recipe-v2"


@pytest.mark.parametrize(
    "dataset,needles",
    [("cifar10", ["data.name", "cifar10"]), ("mnist", ["data.name", "mnist"])],
)
def test_validate_checks_the_data_is_present(
    dataset: str, needles: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = workdir / "empty-data"
    empty.mkdir()
    recipe = workdir / "r.yaml"
    recipe.write_text(
        BASE.replace("digits", dataset).replace("small_cnn", "lenet5") + "prune: {method: magnitude}\n"
    )
    code, out, _ = cli(["validate", recipe], capsys)  # without --data-dir the files are not looked for
    assert code == 0 and "ok:" in out
    code, _, err = cli(["validate", recipe, "--data-dir", empty], capsys)
    assert_one_line_error(code, err, *needles, exit_code=2)


def test_validate_checks_pretrained_weights_are_present(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = workdir / "empty-data"
    empty.mkdir()
    recipe = workdir / "r.yaml"
    recipe.write_text(
        "model: {name: resnet20, init: pretrained, pretrained: resnet20_cifar10}\ndata: {name: digits}\n"
        "prune: {method: magnitude}\n"
    )
    code, _, err = cli(["validate", recipe, "--data-dir", empty], capsys)
    assert_one_line_error(code, err, "model.pretrained", "resnet20_cifar10", exit_code=2)


def test_validate_finds_shared_data(
    shared_data_dir: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = workdir / "r.yaml"
    recipe.write_text(
        "model: {name: resnet20, init: pretrained, pretrained: resnet20_cifar10}\ndata: {name: cifar10}\n"
        "prune: {method: magnitude}\n"
    )
    code, out, err = cli(["validate", recipe, "--data-dir", shared_data_dir], capsys)
    assert code == 0, err
    assert "ok:" in out
