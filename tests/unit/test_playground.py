"""The playground page in a real headless browser (Debian's chromium + chromedriver through
selenium) against a real server and a real tiny pipeline: type a prompt, generate, see the
images and both charts. The screenshot is kept as a test artifact."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from paris.config import SampleConfig, ServeConfig
from paris.router.assemble import random_pipeline
from paris.router.server import create_app
from tests.helpers import eventually, serving

ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver "
    "(scripts/test-infra build browser does it)",
)


def test_the_playground_generates_and_charts_the_experts(tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    pipe = random_pipeline(4)
    app = create_app(lambda: pipe, SampleConfig(steps=6, routing=["top2"]), ServeConfig(precision="no"),
                     model_name="digits")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="paris-chromium-", dir=tmp_path)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    with serving(app) as url:
        eventually(lambda: httpx.get(url + "/readyz").status_code == 200, 60, "the pipeline to load")
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: "4 experts" in d.find_element(By.ID, "meta").text)
            assert driver.find_element(By.ID, "steps").get_attribute("value") == "6", "defaults from the server"
            driver.find_element(By.ID, "prompt").send_keys("a handwritten digit seven")
            Select(driver.find_element(By.ID, "routing")).select_by_value("full")
            count = driver.find_element(By.ID, "count")
            count.clear()
            count.send_keys("3")
            driver.find_element(By.ID, "seed").send_keys("42")
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#images img.result")) == 3)
            wait.until(lambda d: all(
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", im)
                for im in d.find_elements(By.CSS_SELECTOR, "#images img.result")
            ))
            bars = driver.find_elements(By.CSS_SELECTOR, "#usage-chart rect[data-expert]")
            shares = [float(b.get_attribute("data-share") or "nan") for b in bars]
            assert len(bars) == 4 and abs(sum(shares) - 1) < 1e-2, shares
            steps = driver.find_elements(By.CSS_SELECTOR, "#trace-chart rect")
            assert len(steps) == 6 * 4, "one stacked bar per step, one segment per expert (full routing)"
            status = driver.find_element(By.ID, "status").text
            assert "3 image(s)" in status and "seed 42" in status, status
            shot = tmp_path / "playground.png"
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "playground.png")
    assert shot.stat().st_size > 10_000
