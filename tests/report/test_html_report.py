"""The HTML report: built from real small runs, opened in headless Chromium (every image decodes, no console
errors), screenshot saved to the test artifacts (``MTLSCOPE_TEST_ARTIFACTS``, default ``test-artifacts/``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mtlscope.report.html import write_report
from mtlscope.runs import execute, validate_config

PROBES = {
    "sharpness": {"subset": 64, "iterations": 3, "batch_size": 32, "every": 1},
    "fim_trace": {"subset": 64, "every": 1},
    "grad_cov_trace": {"subset": 64, "large_batch": 32, "small_batch": 8, "every": 1},
    "grad_similarity": {"batches": 3, "every": 1},
    "affinity": {"every_steps": 2},
    "min_train_loss": {},
}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report-runs")
    variants: list[tuple[list[str], str, float]] = [
        (tasks, "umtg", 1e-3)
        for tasks in (
            ["digits1"],
            ["digits2"],
            ["noisy-digits"],
            ["digits1", "digits2"],
            ["digits1", "noisy-digits"],
            ["digits1", "digits2", "noisy-digits"],
        )
    ]
    # another method (Fig. 4) and another temperature (temperature curves)
    variants += [(["digits1", "digits2"], "pcgrad", 1e-3), (["digits1"], "umtg", 3e-3)]
    variants += [(["digits1", "digits2"], "umtg", 3e-3)]
    for tasks, method, lr in variants:
        for seed in (0, 1):
            config = {
                "seed": seed,
                "setting": {"name": "digits-mtl", "tasks": tasks},
                "model": {"encoder": {"name": "mlp", "hidden": [32, 8]}},
                "method": {"name": method},
                "optimizer": {"name": "adam", "lr": lr},
                "training": {"steps": 24, "eval_every": 6, "batch_size": 16},
                "probes": PROBES,
            }
            assert execute(validate_config(config), out).status == "completed"
    return out


def _artifacts() -> Path:
    path = Path(os.environ.get("MTLSCOPE_TEST_ARTIFACTS", "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_report_is_self_contained_with_every_supported_section(results_dir: Path, tmp_path: Path) -> None:
    out = write_report(results_dir, tmp_path / "report.html")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page  # no external resources
    for heading in ("Overview", "Key tables", "Figures", "Run inventory", "Software versions"):
        assert heading in page
    # Figs 1 and 3 per task, SMTO quadrants, conflict scatters, temperature curves, affinity, grouping
    assert page.count('<img src="data:image/png;base64,') >= 10
    for caption in ("(Fig. 1)", "(Fig. 3)", "vs UMTG, per task and variant (Fig. 4)", "temperature lr/B", "affinity"):
        assert caption in page
    assert "Needs UMTG runs and runs of at least one other method" not in page
    assert "IT-MTL" in page  # no it_mtl runs: its entry says what to run
    assert not (tmp_path / "report.html.partial").exists()


def test_report_refuses_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs"):
        write_report(tmp_path / "empty", tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_report_opens_in_headless_chromium(results_dir: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        if os.environ.get("MTLSCOPE_SKIP_BROWSER") == "1":
            pytest.skip("MTLSCOPE_SKIP_BROWSER=1 and no chromium/chromedriver")
        pytest.fail("chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out = write_report(results_dir, tmp_path / "report.html")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(out.resolve().as_uri())
        assert "mtlscope report" in driver.title
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);"
        )
        assert len(images) >= 5
        broken = [alt for complete, width, height, alt in images if not (complete and width > 0 and height > 0)]
        assert not broken, f"images that did not decode: {broken}"
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, f"console errors: {errors}"
        driver.save_screenshot(str(_artifacts() / "report-screenshot.png"))
    finally:
        driver.quit()
    assert (_artifacts() / "report-screenshot.png").stat().st_size > 10_000


@pytest.mark.parametrize(("eval_every", "noted"), [(20, True), ("log", False)])
def test_report_notes_an_early_phase_without_checkpoints(tmp_path: Path, eval_every: object, noted: bool) -> None:
    """Checkpoints at steps 0, 20, 40: the loss falls past the early bins (2-5) before step 20, and the report says
    so under Figure 1; log-spaced checkpoints fill the early bins, and the note is gone."""
    for tasks in (["digits1"], ["digits1", "digits2"]):
        config = {
            "setting": {"name": "digits-mtl", "tasks": tasks},
            "model": {"encoder": {"name": "mlp", "hidden": [32]}},
            "optimizer": {"name": "adam", "lr": 3e-3},
            "training": {"steps": 40, "eval_every": eval_every, "batch_size": 16},
        }
        assert execute(validate_config(config), tmp_path / "runs").status == "completed"
    page = write_report(tmp_path / "runs", tmp_path / "report.html").read_text()
    note = '<p class="note warning">Note: early phase: 0 checkpoints in loss bins 2–5 in 1 of 1 comparisons of digits1'
    assert (note in page) is noted
    assert ("train with training.eval_every: log" in page) is noted
