"""The run's report (snakemake --report) as a user opens it: in headless Chromium (Debian's, installed
by the test set-up as SLURM is), through Selenium. No console error, every figure and table of the
run present and shown when its entry is opened, and the worst-rows table filled. The tables'
arithmetic: the unit tests below."""

import numpy as np
import pandas as pd
import pytest
from arena_pref.blend import diagnostics
from workflow_helpers import copy_run, planned_jobs, snakemake, write_config

REPORTED = {
    "results/plots/fold_scores.png",
    "results/plots/calibration.png",
    "results/plots/position_consistency.png",
    "results/plots/loss_by_group.png",
    "results/report/members.html",
    "results/report/position_consistency.html",
    "results/report/loss_by_group.html",
    "results/report/post_rules.html",
    "results/report/worst_rows.html",
}


def frame(given, swapped_back):
    """An OOF frame whose TTA columns average the given order and the swapped one mapped back."""
    given, swapped_back = np.asarray(given, float), np.asarray(swapped_back, float)
    tta = (given + swapped_back) / 2
    return pd.DataFrame(
        {
            "id": np.arange(len(given)),
            "fold": 0,
            **dict(zip(diagnostics.GIVEN, given.T)),
            **dict(zip(diagnostics.TTA, tta.T)),
        }
    )


def test_position_consistency_reads_the_swapped_order_back_from_the_tta_columns():
    found = diagnostics.position_consistency(
        frame([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]], [[0.3, 0.6, 0.1], [0.5, 0.3, 0.2]])  # row 0 flips
    )
    assert found == {"rows": 2, "flip_rate": 0.5, "mean_abs_diff_a": pytest.approx(0.2)}
    assert diagnostics.position_consistency(frame([[0.7, 0.2, 0.1]], [[0.7, 0.2, 0.1]])) is None  # no swap


def test_the_worst_rows_are_those_the_blend_got_most_wrong():
    parsed = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "prompt": [["p" * 100, "again"], ["q"], ["r"]],
            "response_a": [["aa"], ["a"], [None]],
            "response_b": [["bbb"], [""], ["b"]],
        }
    )
    blend = pd.DataFrame(
        {"id": [1, 2, 3], "label": [0, 1, 2], "a": [0.9, 0.9, 0.3], "b": [0.05, 0.05, 0.3], "tie": [0.05, 0.05, 0.4]}
    )
    worst = diagnostics.worst_rows(blend, parsed, n=2)
    assert worst["id"].tolist() == [2, 3] and worst["label"].tolist() == ["B", "tie"]
    assert worst.loc[0, "log_loss"] == pytest.approx(-np.log(0.05))
    assert diagnostics.worst_rows(blend, parsed, n=3).loc[2, "prompt"] == "p" * 80 + "…"
    by = diagnostics.loss_by_group(blend, parsed)
    assert by[by["by"] == "turns"].set_index("group")["rows"].to_dict() == {"1": 2, "2": 1}


@pytest.fixture(scope="module")
def browser():
    from debian import Unavailable, ensure_installed

    try:
        ensure_installed(("chromium", "chromedriver"), ("chromium", "chromium-driver"))
    except Unavailable as err:
        pytest.skip(f"no Chromium: {err}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def open_entry(driver, report, path):
    """Load ``report`` and click the eye of ``path``'s row in its category, as a user opens it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(report.as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return typeof categories === 'object'"))
    category = driver.execute_script(
        "return Object.keys(categories).find(c => Object.values(categories[c]).some(l => l.includes(arguments[0])))",
        path,
    )
    WebDriverWait(driver, 10).until(
        ec.element_to_be_clickable((By.XPATH, f"//a[normalize-space()='{category}']"))
    ).click()
    eye = f"//tr[td[normalize-space()='{path}']]//a[@iconname='eye']"
    WebDriverWait(driver, 10).until(ec.element_to_be_clickable((By.XPATH, eye))).click()


@pytest.mark.slow
def test_the_report_opens_in_a_browser_with_every_figure_and_table(run_a, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    report = tmp_path / "report.html"
    snakemake(run_a, "--report", str(report))
    browser.get(report.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return typeof results === 'object'"))
    assert set(browser.execute_script("return Object.keys(results)")) == REPORTED
    for path in sorted(p for p in REPORTED if p.endswith(".png")):
        open_entry(browser, report, path)
        shown = (By.XPATH, "//img[starts-with(@src, 'data:image/png')]")
        image = WebDriverWait(browser, 10).until(ec.presence_of_element_located(shown))
        WebDriverWait(browser, 10).until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 100)
    open_entry(browser, report, "results/report/worst_rows.html")
    shown = (By.XPATH, "//iframe[starts-with(@src, 'data:text/html')]")
    browser.switch_to.frame(WebDriverWait(browser, 10).until(ec.presence_of_element_located(shown)))
    rows = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in browser.find_elements(By.XPATH, "//tbody/tr")
    ]
    browser.switch_to.default_content()
    assert len(rows) == diagnostics.WORST_ROWS and all(len(r) == 9 and all(r[i] for i in (0, 1, 4)) for r in rows), rows
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.slow
def test_a_blend_change_redraws_only_what_depends_on_the_blend(run_a, tmp_path):
    """The members' position consistency reads their OOF rows only: a new blend leaves it. The
    training time comes from benchmark files read where they exist: without them nothing reruns
    (an input, a missing one had planned every fold's training again)."""
    config = write_config(tmp_path, **{"blend.stack_C": 0.5})
    planned = planned_jobs(snakemake(run_a, "-n", config=config))
    assert planned == {"blend": 1, "plots": 1, "diagnostics": 1, "all": 1}, planned
    copy = copy_run(run_a, tmp_path / "w", drop=["results/benchmarks"])
    assert planned_jobs(snakemake(copy, "-n")) == {}
