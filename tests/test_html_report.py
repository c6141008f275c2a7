"""The HTML report: one self-contained page per sweep, opened in a real browser (headless Chromium through
selenium and Debian's chromium-driver): no console errors, no network, the forest plot and the tables with
the expected rows, sorting that works; screenshots kept in results/test-artefacts/."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tunebench.app.html_report import compare_table, write_html
from tunebench.app.report import main as report_main
from tunebench.app.frame import load_frame
from tunebench.core.record import failed_record

from .conftest import ROOT

PUBLISHED_QUICK = ROOT / "results" / "published" / "quick" / "records"
ARTEFACTS = ROOT / "results" / "test-artefacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """The published quick sweep (9 ok records) plus one failed cell."""
    folder = tmp_path_factory.mktemp("html") / "runs" / "quick"
    shutil.copytree(PUBLISHED_QUICK, folder)
    some = json.loads(next(folder.glob("*.json")).read_text())
    failed = failed_record(some["config"], "f" * 16, "quick", "RuntimeError", "the loss was nan at step 3")
    (folder / f"{'f' * 16}.json").write_text(json.dumps(failed))
    return folder


@pytest.fixture(scope="module")
def page(sweep) -> Path:
    return write_html(sweep, sweep.parent.parent / "tables" / "quick" / "report.html")


def test_page_is_self_contained_and_names_every_part(page, sweep):
    text = page.read_text()
    assert "<script src=" not in text and "https://" not in text.split("</script>")[-1]  # plotly.js inlined
    assert text.count('class="plotly-graph-div"') >= 3  # forest, Pareto, curves
    for part in ("accuracy (PEFT - full, pt)", "trainable params (PEFT / full)", "peak memory (PEFT / full)", "train time (PEFT / full)"):
        assert part in text
    assert "the loss was nan at step 3" in text and "1 failed, 9 ok" in text
    for record in sweep.glob("*.json"):  # a link to every record, relative to the page
        assert f'href="../../runs/quick/{record.name}"' in text


def test_compare_finds_a_change_beyond_seed_noise(sweep, tmp_path, capsys):
    """B = A with LoRA's accuracy raised by 5 points on every seed: LoRA 'B higher', the other arms identical."""
    other = tmp_path / "runs" / "after"
    shutil.copytree(sweep, other)
    for path in other.glob("*.json"):
        record = json.loads(path.read_text())
        if record["status"] == "ok" and record["cell"]["method"] == "lora":
            record["metrics"]["test_acc"] += 0.05
            path.write_text(json.dumps(record))
    table = compare_table(load_frame(sweep), load_frame(other)).set_index("method")
    assert table.loc["lora", "diff"] == pytest.approx(0.05)
    assert table.loc["lora", "verdict"] == "B higher"
    assert table.loc["full", "diff"] == 0 and table.loc["full", "verdict"] == "within seed noise"
    assert report_main(["--compare", str(sweep), str(other), "--out", str(tmp_path)]) == 0  # the CLI's own entry
    assert (tmp_path / "tables" / "quick_vs_after.html").is_file() and "B higher" in capsys.readouterr().out


def _browser(width: int):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = "Debian's chromium and chromium-driver are not installed (`make` installs them when it runs as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    # No network: every request other than the page's own file goes to a closed port and would fail loudly.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--proxy-server=127.0.0.1:9",
                f"--window-size={width},1000"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _screenshot(driver, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(driver.get_window_size()["width"], min(height + 50, 16000))
    driver.save_screenshot(str(ARTEFACTS / name))


@pytest.mark.parametrize("width", [1280, 420])
def test_page_renders_in_chromium(page, width):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(width)
    try:
        driver.get(page.resolve().as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return document.querySelectorAll('#fig-forest .ytick').length > 0"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [r for r in resources if not r.startswith(("file:", "data:", "blob:"))] == []
        # the forest plot: one row per comparison and part with an estimate (2 comparisons x 4 parts)
        labels = driver.execute_script("return Array.from(document.querySelectorAll('#fig-forest .yaxislayer-above text')).map(t => t.textContent)")
        assert len(labels) == 8 and set(labels) == {"rotten_tomatoes / none:lora vs full", "rotten_tomatoes / none:prefix vs full"}  # two lines (tspans)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#claim tbody tr")) == 8
        rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        # the failed cell (it failed before its task loaded: refinement '?') is its own highlighted row
        assert sorted(r.find_elements(By.TAG_NAME, "td")[2].text for r in rows) == ["full", "full", "lora", "prefix"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.not-ok")) == 1
        header = next(th for th in driver.find_elements(By.CSS_SELECTOR, "#results th") if th.text == "acc")

        def accs():
            return [r.find_elements(By.TAG_NAME, "td")[7].text.split(" ")[0]
                    for r in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")]

        driver.execute_script("arguments[0].click()", header)
        ascending = accs()
        assert ascending[-1] == "-" and [float(a) for a in ascending[:3]] == sorted(float(a) for a in ascending[:3])
        driver.execute_script("arguments[0].click()", header)
        descending = accs()
        assert descending[-1] == "-" and [float(a) for a in descending[:3]] == sorted((float(a) for a in descending[:3]), reverse=True)
        assert np.isclose(float(descending[0]), 0.8043)  # full fine-tuning's published mean
        assert len(driver.find_elements(By.CSS_SELECTOR, "#failures tbody tr")) == 1
        # every arm is drawn inside every accuracy-vs-cost panel: each marker's centre within the panel's plot area
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "const p = document.querySelectorAll('div[id^=fig-pareto]'); return p.length == 3 && Array.from(p).every(gd => gd._fullLayout)"))
        panels = driver.execute_script("""
            return Array.from(document.querySelectorAll('div[id^=fig-pareto]')).map(gd => {
              const plot = gd.querySelector('.draglayer .nsewdrag').getBoundingClientRect();
              const cell = (gd.closest('.cell') || gd.parentElement).getBoundingClientRect();  // what the page shows of it
              const area = {left: Math.max(plot.left, cell.left), right: Math.min(plot.right, cell.right),
                            top: Math.max(plot.top, cell.top), bottom: Math.min(plot.bottom, cell.bottom)};
              const points = Array.from(gd.querySelectorAll('.scatterlayer .trace')[0].querySelectorAll('.points path'));
              return {area: [area.left, area.right, area.top, area.bottom],
                      centres: points.map(p => { const r = p.getBoundingClientRect(); return [(r.left + r.right) / 2, (r.top + r.bottom) / 2]; })};
            })""")
        assert len(panels) == 3
        for panel in panels:
            left, right, top, bottom = panel["area"]
            assert len(panel["centres"]) == 3, panel  # full, LoRA and prefix
            assert all(left <= x <= right and top <= y <= bottom for x, y in panel["centres"]), panel
        _screenshot(driver, f"report-quick-{width}px.png")
    finally:
        driver.quit()


def test_published_pages_are_current(tmp_path):
    """Every published sweep's report.html is what `tunebench publish --pages` writes from its records now."""
    from tunebench.app.publish import write_page

    published = ROOT / "results" / "published"
    sweeps = sorted(p.parent for p in published.glob("*/records") if any(p.glob("*.json")))
    assert sweeps and all((published / name).is_file() for name in ("plotly.min.js", "report.css", "report.js"))
    for sweep_dir in sweeps:
        copy = tmp_path / sweep_dir.name
        shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report.html"))
        page = write_page(copy)
        assert page.read_text() == (sweep_dir / "report.html").read_text(), f"{sweep_dir}/report.html is stale: tunebench publish results/published --pages"
        assert "<style>" not in page.read_text() and 'href="../report.css"' in page.read_text()  # shared, not inlined
    pages = (published / "pages.md").read_text()
    assert all(f"[{s.name}](../results/published/{s.name}/report.html)" in pages for s in sweeps)


def test_report_html_through_the_cli_and_a_published_page_in_chromium(sweep, tmp_path):
    """`tunebench report --html` (what `make run` calls) writes the inlined page; a published page loads its
    shared plotly.js from results/published/ without a network."""
    assert report_main([str(sweep), "--html", "--out", str(tmp_path)]) == 0  # `tunebench report`'s own entry
    assert (tmp_path / "tables" / "quick" / "report.html").stat().st_size > 3_000_000  # plotly.js inside
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(1280)
    try:
        for page in (tmp_path / "tables" / "quick" / "report.html", ROOT / "results" / "published" / "quick" / "report.html"):
            driver.get(page.resolve().as_uri())
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                "return document.querySelectorAll('#fig-forest .yaxislayer-above text').length == 8"))
            assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == [], page
            resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert [r for r in resources if not r.startswith(("file:", "data:", "blob:"))] == [], page
            assert driver.execute_script("return document.querySelectorAll('div[id^=fig-pareto]').length") == 3, page
            assert len(driver.find_elements("css selector", "#results tbody tr")) >= 3, page
            # the style and the table script, inlined or shared, are applied: max-width from the style, sorting from the script
            assert driver.execute_script("return getComputedStyle(document.body).maxWidth") == "1400px", page
            header = driver.find_element("css selector", "#results th")
            driver.execute_script("arguments[0].click()", header)
            assert header.get_attribute("data-order") == "asc", page
    finally:
        driver.quit()


def test_plotted_numbers_are_rounded_so_a_page_does_not_depend_on_the_cpus_float_kernels():
    """The same ratio from AVX2 and AVX512 reductions can differ in its last bit; the page must not."""
    from tunebench.app.html_report import _stable

    assert _stable([0.3158964226874704, "lora", 7]) == _stable([0.3158964226874705, "lora", 7]) == [0.315896422687, "lora", 7]
    assert _stable(np.array([2.5e-7, 1234567.891011121])) == [2.5e-7, 1234567.89101]
    assert _stable(None) is None
