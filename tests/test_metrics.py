"""Parameter, non-zero, MAC, latency and file-size measurements, on plain and masked models."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunelab.core import masking
from prunelab.errors import ConfigError
from prunelab.metrics import (
    ParamCount,
    count_parameters,
    dense_macs,
    effective_macs,
    file_size,
    layer_table,
    measure_latency,
    speed,
)
from prunelab.metrics.latency import interleaved_times
from prunelab.metrics.speed import compare_latency, onnxruntime_available

INPUT = (3, 10, 12)  # C, H, W


def hand_built() -> nn.Module:
    # conv: 4·3·3·3 + 4 = 112; bn: 4 + 4 = 8; linear: 16·5 + 5 = 85  →  205 parameters.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def filled(model: nn.Module, value: float = 0.5) -> nn.Module:
    # No accidental zeros, so non-zero counts are exact.
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def prune_first(model: nn.Module, n_pruned: int) -> torch.Tensor:
    conv = model[0]
    keep = torch.ones(conv.weight.numel(), dtype=torch.bool)
    keep[:n_pruned] = False
    masking.add_mask(conv)
    return masking.update_mask(conv, "weight", keep.view_as(conv.weight))


def test_parameter_count_of_hand_built_model() -> None:
    model = filled(hand_built())
    assert count_parameters(model) == ParamCount(205, 205)
    total, nonzero = count_parameters(model)  # unpacks like a tuple
    assert (total, nonzero) == (205, 205)


def test_masked_entries_count_as_zeros_and_masks_are_not_double_counted() -> None:
    model = filled(hand_built())
    masking.add_mask(model[0])
    assert count_parameters(model) == (205, 205)  # the original and the mask buffer are not extra params
    prune_first(model, 30)
    counts = count_parameters(model)
    assert counts == (205, 175)
    assert counts.sparsity == pytest.approx(30 / 205) and counts.compression == pytest.approx(205 / 175)
    assert parametrize.is_parametrized(model[0], "weight")  # measuring never bakes


def test_dense_macs_of_a_convolution() -> None:
    h, w, cin, cout, k = 10, 12, 3, 4, 3
    conv = nn.Conv2d(cin, cout, k, padding=1, bias=True)
    assert dense_macs(conv, (cin, h, w)) == h * w * cin * cout * k * k
    assert dense_macs(conv, (cin, h, w), batch_size=4) == 4 * h * w * cin * cout * k * k
    strided = nn.Conv2d(cin, cout, k, stride=2, padding=1)
    assert dense_macs(strided, (cin, h, w)) == 5 * 6 * cin * cout * k * k
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    assert dense_macs(depthwise, (4, h, w)) == h * w * 4 * 1 * 9


def test_dense_macs_of_linear_and_whole_model() -> None:
    assert dense_macs(nn.Linear(7, 5), (7,)) == 7 * 5
    model = hand_built()
    assert dense_macs(model, INPUT) == 10 * 12 * 3 * 4 * 9 + 16 * 5


def test_layer_table_rows() -> None:
    model = filled(hand_built())
    prune_first(model, 27)  # a quarter of the 108 conv weights
    rows = layer_table(model, INPUT)
    assert [r["name"] for r in rows] == ["0", "5"]
    conv, fc = rows
    assert conv["type"] == "Conv2d" and conv["shape"] == [4, 3, 3, 3]
    assert (conv["params"], conv["nonzero"]) == (108, 81) and conv["sparsity"] == pytest.approx(0.25)
    assert conv["macs_dense"] == 12960 and conv["macs_effective"] == 9720  # 10·12·3·4·9, × 3/4
    assert fc == {
        "name": "5",
        "type": "Linear",
        "shape": [5, 16],
        "params": 80,
        "nonzero": 80,
        "sparsity": 0.0,
        "macs_dense": 80,
        "macs_effective": 80,
    }


def test_effective_macs_scale_with_density() -> None:
    model = filled(hand_built())
    dense = dense_macs(model, INPUT)
    assert effective_macs(model, INPUT) == dense
    prune_first(model, 54)  # half of the conv weights
    assert dense_macs(model, INPUT) == dense  # masks do not change dense MACs
    assert effective_macs(model, INPUT) == 12960 // 2 + 80
    assert effective_macs(model, INPUT, batch_size=3) == 3 * (12960 // 2 + 80)


def test_measurements_restore_training_mode() -> None:
    model = hand_built()
    model.train()
    dense_macs(model, INPUT)
    layer_table(model, INPUT)
    measure_latency(model, INPUT, warmup=1, repeats=2)
    assert model.training


def test_latency_returns_positive_ordered_figures() -> None:
    model = hand_built()
    masking.add_mask(model[0])
    threads = torch.get_num_threads()
    result = measure_latency(model, INPUT, batch_size=2, warmup=2, repeats=7, threads=1)
    assert result["median_ms"] > 0
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["repeats"] == 7 and result["batch_size"] == 2 and result["threads"] == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(ConfigError):
        measure_latency(model, INPUT, repeats=0)


def test_interleaved_timer_alternates_the_functions() -> None:
    calls: list[str] = []
    times = interleaved_times([lambda: calls.append("a"), lambda: calls.append("b")], warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds, alternating
    assert [len(t) for t in times] == [3, 3] and all(v >= 0 for t in times for v in t)


def test_compare_latency_times_both_models_with_the_same_timer() -> None:
    dense, compact = hand_built(), hand_built()
    dense.train()
    frozen = next(m for m in dense.modules() if isinstance(m, nn.BatchNorm2d))
    frozen.eval()  # a frozen norm inside a training model: mixed modes
    compact.eval()
    modes = [m.training for m in dense.modules()]
    result = compare_latency(dense, compact, INPUT, batch_sizes=(1, 2), warmup=1, repeats=3, onnx=False)
    assert set(result["eager_cpu"]) == {"1", "2"}
    for row in result["eager_cpu"].values():
        assert row["dense_ms"] > 0 and row["compact_ms"] > 0
        assert row["speedup"] == pytest.approx(row["dense_ms"] / row["compact_ms"])
    assert result["onnxruntime"] == {"skipped": "disabled"} and result["repeats"] == 3
    assert [m.training for m in dense.modules()] == modes and not compact.training  # each mode restored


def test_file_size(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 123)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 77)
    assert file_size(tmp_path / "a.bin") == 123
    assert file_size(tmp_path) == 200
    with pytest.raises(FileNotFoundError):
        file_size(tmp_path / "missing")


onnx_only = pytest.mark.skipif(not onnxruntime_available(), reason="needs prunelab[onnx]")


@onnx_only
def test_latency_onnx_files_go_to_the_given_folder_and_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_tmp = tmp_path / "system"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen: list[str] = []
    export = speed._export

    def recording(model: nn.Module, x: torch.Tensor, path: str, dynamo: bool) -> None:
        seen.append(path)
        export(model, x, path, dynamo)

    monkeypatch.setattr(speed, "_export", recording)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dense, compact = hand_built().eval(), hand_built().eval()
    result = compare_latency(dense, compact, INPUT, batch_sizes=(2,), warmup=1, repeats=2, folder=run_dir)
    rt = result["onnxruntime"]
    assert rt["2"]["dense_ms"] > 0 and rt["2"]["compact_ms"] > 0
    for info in rt["export"].values():  # the fast exporter, outputs checked
        assert info["exporter"] == "torchscript" and info["max_abs_diff"] <= speed.ONNX_TOLERANCE
    assert len(seen) == 2 and all(Path(p).parent.parent == run_dir for p in seen)
    assert list(run_dir.iterdir()) == [] and list(system_tmp.iterdir()) == []  # removed, nothing outside


@onnx_only
def test_onnx_session_falls_back_to_the_default_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = speed._export

    def broken_torchscript(model: nn.Module, x: torch.Tensor, path: str, dynamo: bool) -> None:
        if not dynamo:
            raise RuntimeError("unsupported operator\nsecond line")
        export(model, x, path, dynamo)

    monkeypatch.setattr(speed, "_export", broken_torchscript)
    model = hand_built().eval()
    x = torch.randn(1, *INPUT)
    session, info = speed.onnx_session(model, x, str(tmp_path))
    assert info["exporter"] == "dynamo" and info["torchscript_failed"] == "torchscript: unsupported operator"
    batch = torch.randn(3, *INPUT)
    with torch.no_grad():
        assert torch.allclose(
            torch.from_numpy(session.run(None, {"x": batch.numpy()})[0]), model(batch), atol=1e-5
        )


@onnx_only
def test_latency_records_an_export_whose_outputs_differ_as_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    export = speed._export

    def wrong_model(model: nn.Module, x: torch.Tensor, path: str, dynamo: bool) -> None:
        export(filled(hand_built()).eval(), x, path, dynamo=False)  # another network's file

    monkeypatch.setattr(speed, "_export", wrong_model)
    dense, compact = hand_built().eval(), hand_built().eval()
    result = compare_latency(dense, compact, INPUT, batch_sizes=(1,), warmup=1, repeats=1)
    reason = result["onnxruntime"]["skipped"]
    assert "torchscript: outputs differ" in reason and "dynamo: outputs differ" in reason
