"""report.html in a real headless Chromium: the columns a user asks for, every plot loads, no console errors.

Three tiny real runs on the shipped digits (dense, one-shot magnitude: masked, L1-filter: compacted by
surgery with its dense vs compact latency measured on PyTorch and ONNX Runtime), ``prunelab report``
over them, and the page opened from disk by Selenium driving Debian's chromium + chromedriver
(``apt-get install chromium chromium-driver``; .ci/run installs them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prunelab.cli import main
from prunelab.experiments.runner import run_recipe
from prunelab.experiments.schema import recipe_from_dict

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

TRAIN = {"epochs": 1, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64}
RUNS: dict[str, dict[str, Any]] = {
    "dense": {"method": "dense"},
    "magnitude": {"method": "magnitude", "sparsity": 0.7},
    "l1": {
        "method": "l1_filter",
        "sparsity": 0.5,
        "options": {"speed_batch_sizes": [1, 8], "speed_repeats": 3},
    },
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The report folder of the three runs and their summaries."""
    root = tmp_path_factory.mktemp("browser_report")
    summaries = {}
    for name, prune in RUNS.items():
        recipe = {
            "name": name,
            "seed": 0,
            "model": {"name": "small_cnn"},
            "data": {"name": "digits"},
            "train": TRAIN,
            "prune": prune,
            "eval": {"latency_batch_sizes": [1, 8], "latency_repeats": 3},
        }
        if prune["method"] != "dense":  # the dense method never fine-tunes
            recipe["finetune"] = TRAIN
        summaries[name] = run_recipe(recipe_from_dict(recipe), root / name, echo=None, progress=False)
    assert main(["report", str(root)]) == 0
    return root, summaries


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _headers(driver: Any, table: str) -> list[str]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#{table} thead th')).map(t => t.textContent)"
    )


def _rows(driver: Any, table: str) -> list[list[str]]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#{table} tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent))"
    )


def _images(driver: Any) -> list[tuple[str, bool, int]]:
    return [
        tuple(i)
        for i in driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
    ]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium chromium-driver"
)
def test_report_html_in_headless_chromium(
    report: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    root, summaries = report
    l1 = summaries["l1"]
    assert l1["speedup"]["onnxruntime"].get("1"), (
        f"ONNX Runtime was not timed: {l1['speedup']['onnxruntime']}"
    )
    speedups = [
        f"speed-up {backend}, batch {bs}"
        for backend in ("PyTorch CPU", "ONNX Runtime", "eval latency")
        for bs in (1, 8)
    ]
    driver = _browser()
    try:
        driver.get((root / "report.html").as_uri())
        assert driver.title == "prunelab report"
        # The columns that answer "what did pruning buy": compression, MACs ratio, measured speed-ups.
        grouped, runs = _headers(driver, "grouped"), _headers(driver, "runs")
        for headers in (grouped, runs):
            for column in ("compression", "MACs ratio", *speedups):
                assert column in headers, (column, headers)
        cells = {row[0]: dict(zip(runs, row, strict=True)) for row in _rows(driver, "runs")}
        assert set(cells) == set(RUNS)
        assert [cells[n]["network"] for n in ("dense", "magnitude", "l1")] == ["dense", "masked", "compacted"]
        assert cells["l1"]["compression"] == f"{l1['compression']:.2f}x"
        assert cells["l1"]["MACs ratio"] == f"{l1['macs_ratio']:.2f}x"
        eager, ort = l1["speedup"]["eager_cpu"], l1["speedup"]["onnxruntime"]
        assert cells["l1"]["speed-up PyTorch CPU, batch 8"] == f"{eager['8']['speedup']:.2f}x"
        assert cells["l1"]["speed-up ONNX Runtime, batch 1"] == f"{ort['1']['speedup']:.2f}x"
        assert cells["l1"]["speed-up eval latency, batch 1"] == f"{l1['latency_speedup']['1']:.2f}x"
        # The masked run's timing against the dense model is noise: measured, but never shown as a speed-up.
        assert summaries["magnitude"]["latency_speedup"]
        assert all(cells["magnitude"][c] == "–" and cells["dense"][c] == "–" for c in speedups)
        # Every plot is embedded and decodes.
        images = _images(driver)
        assert [alt.split(" (")[0] for alt, _, _ in images] == [
            "accuracy vs compression",
            "accuracy vs measured speed-up over the dense model",
            "accuracy vs remaining",
            "accuracy vs MACs ratio",
            "accuracy vs measured latency",
        ]
        assert all(complete and width > 0 for _, complete, width in images), images
        logs = driver.get_log("browser")
        assert not [entry for entry in logs if entry["level"] in ("SEVERE", "ERROR")], logs
        # The console is really captured: an error raised now is seen.
        driver.execute_script("console.error('prunelab-probe')")
        assert any("prunelab-probe" in entry["message"] for entry in driver.get_log("browser"))

        # And the image check does fail on a plot that does not decode.
        broken = tmp_path / "broken.html"
        page = (root / "report.html").read_text()
        start = page.index("data:image/png;base64,") + len("data:image/png;base64,")
        broken.write_text(page[:start] + "AAAA" + page[start + 4000 :])
        driver.get(broken.as_uri())
        widths = [width for _, _, width in _images(driver)]
        assert widths[0] == 0 and all(w > 0 for w in widths[1:])
    finally:
        driver.quit()
    # The markdown twin carries the same speed-up columns.
    assert all(column in (root / "report.md").read_text() for column in speedups)
