"""`dtlab report` page in headless Chromium (Selenium + system chromedriver), opened from file:// (no server).

Runs V1 and V3 at smoke size into a temporary outputs/ (or, with DTLAB_REPORT_OUTPUTS=<dir>, takes an
existing outputs tree, e.g. the one `make experiments` filled), builds the page and checks what a reader
sees: one card per finished run, every figure loaded (an <img> with a decoded bitmap), the experiment
filter hiding the other experiment's cards and the substrate filter keeping the matching ones. The
screenshot is kept in outputs/ui/report.png. Chromium and chromedriver are stopped in teardown, by pid.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dtlab import cli
from dtlab.results import iter_runs
from tests.heavy import require
from tests.ui.chrome import headless_chrome

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "outputs" / "ui" / "report.png"
BUDGET_S = 240

pytestmark = [pytest.mark.heavy("chromium"), pytest.mark.timeout(BUDGET_S)]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    given = os.environ.get("DTLAB_REPORT_OUTPUTS")
    if given:
        return Path(given)
    root = tmp_path_factory.mktemp("outputs")
    for exp in ("V1", "V3"):
        assert cli.main(["run", exp, "--smoke", "--out", str(root), "-q"]) == 0
    return root


@pytest.fixture()
def browser(tmp_path):
    require(bool(shutil.which("chromium")) and bool(shutil.which("chromedriver")),
            "chromium + chromedriver (make test-deps)")
    with headless_chrome(tmp_path, "1400,1800", ("--allow-file-access-from-files",)) as driver:
        yield driver


_CARDS_JS = """
return [...document.querySelectorAll('section.card')].map(c => ({
  id: c.id, exp: c.dataset.experiment, sub: c.dataset.substrate,
  shown: getComputedStyle(c).display !== 'none',
  imgs: [...c.querySelectorAll('img.fig')].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
  metrics: c.querySelectorAll('table.headline tbody tr').length,
  notebook: [...c.querySelectorAll('p.links a')].map(a => a.getAttribute('href')),
}));
"""


def _select(driver, name: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select
    from selenium.webdriver.common.by import By

    Select(driver.find_element(By.ID, f"f-{name}")).select_by_value(value)


def test_report_page_in_chromium(outputs, browser, tmp_path):
    finished = [r for r in iter_runs(outputs) if r.status == "ok" and r.metrics]
    assert len(finished) >= 2, f"need at least two finished runs under {outputs}"
    out = tmp_path / "report"
    assert cli.main(["report", "--out", str(out), "--outputs", str(outputs)]) == 0
    browser.get((out / "index.html").resolve().as_uri())
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete)"))
    cards = browser.execute_script(_CARDS_JS)
    assert len(cards) == len(finished)                                  # one card per finished run
    assert {c["id"] for c in cards} == {f"{r.experiment}-{r.run_id}" for r in finished}
    for c in cards:
        assert c["shown"], c["id"]
        assert c["imgs"] and all(i["ok"] for i in c["imgs"]), c      # every figure decoded
        assert c["metrics"] > 0, c["id"]                                # headline metrics with CIs
        assert any(h.endswith(".ipynb") for h in c["notebook"]), c["id"]
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000

    exps = sorted({c["exp"] for c in cards})
    if len(exps) >= 2:                                                  # experiment filter hides the others
        _select(browser, "experiment", exps[0])
        after = browser.execute_script(_CARDS_JS)
        assert all(c["shown"] == (c["exp"] == exps[0]) for c in after)
        assert browser.find_element("id", "shown").text == str(sum(c["exp"] == exps[0] for c in after))
        _select(browser, "experiment", "")
    sub = cards[0]["sub"]
    _select(browser, "substrate", sub)
    after = browser.execute_script(_CARDS_JS)
    assert all(c["shown"] == (c["sub"] == sub) for c in after)
