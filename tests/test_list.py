"""``prunelab list``: the kinds without an argument, the shipped recipes, the pretrained files, no copies."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest

from prunelab.cli import LIST_KINDS, LISTABLE, _registry, main

REPO = Path(__file__).resolve().parents[1]


def _listed(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["list", *args]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_list_without_a_kind_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """Bare ``prunelab list`` is no error: it names every kind a KIND argument accepts, with what it is."""
    lines = _listed([], capsys)
    assert "KIND" in lines[0]
    kinds = [line.split()[0] for line in lines[1:]]
    assert kinds == list(LIST_KINDS)
    assert set(LISTABLE) | {"recipes"} == set(kinds)
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines[1:]), "every kind has a description"


def test_list_recipes_one_line_each_from_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    """Every shipped recipe and sweep appears once, described by the first sentence of its own comment."""
    lines = _listed(["recipes"], capsys)
    assert str(REPO / "recipes") in lines[0]
    rows = dict(line.split(maxsplit=1) for line in lines[1:])
    shipped = sorted(p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*.yaml"))
    assert sorted(rows) == shipped
    slimming = (REPO / "recipes/slimming/vgg19_cifar10.yaml").read_text().splitlines()[0].lstrip("# ")
    assert slimming.startswith(rows["slimming/vgg19_cifar10.yaml"][:40])


def test_list_recipes_elsewhere_and_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dir lists another folder; a missing one is a one-line error naming the fix."""
    (tmp_path / "mine.yaml").write_text("# My recipe. More text.\nprune: {method: magnitude}\n")
    (tmp_path / "bare.yaml").write_text(
        "model: {name: lenet5}\ndata: {name: mnist}\nprune: {method: relief}\n"
    )
    lines = _listed(["recipes", "--dir", str(tmp_path)], capsys)
    assert lines[1:] == ["bare.yaml  relief on lenet5 / mnist", "mine.yaml  My recipe."]
    assert main(["list", "recipes", "--dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunelab: error: --dir") and "\n" not in err


def test_list_pretrained_says_presence_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each weights file is reported present or missing, with the path it is looked for at."""
    from prunelab.models.pretrained import PRETRAINED

    spec = PRETRAINED.get("resnet20_cifar10")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / spec.filename).write_bytes(b"not empty")
    lines = _listed(["pretrained", "--data-dir", str(tmp_path)], capsys)
    assert str(tmp_path / "weights") in lines[0]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(PRETRAINED.names())
    assert " present " in rows["resnet20_cifar10"]
    assert rows["resnet20_cifar10"].endswith(str(tmp_path / "weights" / spec.filename))
    resnet56 = PRETRAINED.get("resnet56_cifar10")
    assert "missing (download with --download)" in rows["resnet56_cifar10"]
    assert rows["resnet56_cifar10"].endswith(str(tmp_path / "weights" / resnet56.filename))
    assert "missing (no download" in rows["mobilenet_v1_075_imagenet"]


def test_no_duplicated_names_or_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    """No name twice in a listing, and no description copied, within or across kinds."""
    seen: dict[str, str] = {}
    for kind in (*LISTABLE, "recipes"):
        lines = _listed([kind], capsys)
        if kind in ("recipes", "pretrained"):
            lines = lines[1:]  # the folder line
        rows = [tuple(line.split(maxsplit=1)) for line in lines if line.strip()]
        names = collections.Counter(r[0] for r in rows)
        assert [n for n, c in names.items() if c > 1] == [], f"{kind}: a name listed twice"
        for name, text in (r for r in rows if len(r) == 2):
            if kind == "pretrained":
                text = text.split("  ")[0]  # the description, not the status and path
            assert text not in seen, f"{kind} {name}: the same description as {seen.get(text)}"
            seen[text] = f"{kind} {name}"


def test_same_name_in_two_kinds_is_described_for_each(capsys: pytest.CaptureFixture[str]) -> None:
    """A name in two kinds (the agp method, driver and schedule) says what it is in each, not a copy."""
    import difflib

    described = {kind: dict(row for row in _registry(kind).describe() if row[0]) for kind in LISTABLE}
    for a, b in itertools.combinations(LISTABLE, 2):
        for name in set(described[a]) & set(described[b]):
            ratio = difflib.SequenceMatcher(None, described[a][name], described[b][name]).ratio()
            assert ratio < 0.8, f"{a} {name} and {b} {name} are near copies: {described[a][name]!r}"


def test_dir_and_data_dir_belong_to_their_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """An option that would be ignored is refused in one line."""
    assert main(["list", "models", "--dir", "."]) == 2
    assert "--dir is for 'prunelab list recipes'" in capsys.readouterr().err
    assert main(["list", "recipes", "--data-dir", "."]) == 2
    assert "--data-dir is for 'prunelab list pretrained'" in capsys.readouterr().err
