"""The studio end to end in a real browser: headless Chromium + chromedriver (Debian's ``chromium`` and
``chromium-driver``) driven by selenium.

``duetgen studio --headless`` serves the app on a free localhost port (tiny random pipeline and gallery); the test
draws a stroke on the canvas (inside the component's shadow root) with a pointer drag, types words, checks that
Retrieve shows results, runs Generate and checks its images, checks the browser console for errors, saves a
screenshot (``docs/studio_test_run.png``) and always stops the server. Skipped only when chromium or chromedriver is
not installed.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from test_studio import REPO, make_tiny_assets

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None, reason="chromium and chromedriver are not installed (apt-get install "
    "chromium chromium-driver)"
)  # fmt: skip

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCREENSHOT = REPO / "docs" / "studio_test_run.png"
START_TIMEOUT = 150
STEP_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the studio server did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio_browser")
    assets = make_tiny_assets(root)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DUETGEN_STUDIO_SCENES": "8", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "duetgen", "studio", "--headless", "--port", str(port), "--model",
           str(assets["model"]), "--gallery", str(assets["gallery"]), "--cache-dir", str(root / "cache"),
           "--allow-dir", str(REPO / "samples"), "--allow-dir", str(root)]  # fmt: skip
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, START_TIMEOUT)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: duetgen and its streamlit child
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()
        print((root / "server.log").read_text()[-3000:])


@pytest.fixture(scope="module")
def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1440,1700", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.set_page_load_timeout(STEP_TIMEOUT)
    try:
        yield drv
    finally:
        drv.quit()


def star_path(radius: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for i in range(2 * points + 1):
        r = radius if i % 2 == 0 else radius * 0.45
        a = -math.pi / 2 + i * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def draw(driver, canvas, path: list[tuple[float, float]], substeps: int = 3) -> None:
    """A pointer drag along ``path`` (pixel offsets from the canvas centre), with intermediate points."""
    points = [path[0]]
    for (xa, ya), (xb, yb) in zip(path, path[1:], strict=False):
        points += [(xa + (xb - xa) * i / substeps, ya + (yb - ya) * i / substeps) for i in range(1, substeps + 1)]
    pixels = [(int(round(x)), int(round(y))) for x, y in points]
    chain = ActionChains(driver, duration=15)
    chain.move_to_element_with_offset(canvas, *pixels[0]).click_and_hold()
    for (xa, ya), (xb, yb) in zip(pixels, pixels[1:], strict=False):
        chain.move_by_offset(xb - xa, yb - ya)
    chain.release().perform()


def canvas_element(driver):
    """The fabric.js drawing surface: inside the shadow root of the component's host element."""

    def find(drv):
        for host in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stBidiComponentIsolated"]'):
            try:
                found = host.shadow_root.find_elements(By.CSS_SELECTOR, "canvas.upper-canvas")
            except Exception:  # noqa: BLE001 - the shadow root is attached a moment after the host
                continue
            if found:
                return found[0]
        return False

    return WebDriverWait(driver, STEP_TIMEOUT).until(find)


def panel(driver, label: str):
    """The visible tab panel after clicking the tab labelled ``label``."""
    tab = next(t for t in driver.find_elements(By.CSS_SELECTOR, '[role="tab"]') if label in t.text)
    tab.click()
    return tab


def visible_images(driver) -> list:
    return [im for im in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img') if im.is_displayed()]


def text_present(text: str):
    return lambda drv: text in drv.find_element(By.TAG_NAME, "body").text


def test_draw_type_retrieve_generate(server, driver):
    wait = WebDriverWait(driver, STEP_TIMEOUT)
    driver.get(server)
    wait.until(text_present("Sketch + words → one query"))
    wait.until(text_present("12 photos"))

    canvas = canvas_element(driver)
    assert canvas.size["width"] >= 200
    draw(driver, canvas, star_path(95))
    wait.until(text_present("What the model sees"))  # the canvas sent image_data and the sketch was read
    wait.until(text_present("sketch + words · answered in"))

    words = driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Words"]')
    words.send_keys("red with stripes", Keys.ENTER)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[aria-label="Words"]').get_attribute("value")
               == "red with stripes")  # fmt: skip
    wait.until(text_present("Top 8 of 12 photos"))
    wait.until(lambda d: len(visible_images(d)) >= 8 + 1)  # 8 results + the sketch preview
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "#1 ·" in body and "#8 ·" in body
    assert "Sketch:" not in body  # no sketch error

    panel(driver, "Generate")
    button = wait.until(EC.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Generate']]")))
    button.click()
    wait.until(text_present("Done in"))
    wait.until(lambda d: len(d.find_elements(By.XPATH, "//button[.//p[text()='Download PNG']]")) == 2)
    generated = [im for im in visible_images(driver) if im.get_attribute("naturalWidth") not in (None, "0")]
    assert len(generated) >= 2 + 1  # 2 generated + the sketch preview
    time.sleep(1.0)  # let the last images paint before the screenshot
    SCREENSHOT.parent.mkdir(exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT))

    logs = driver.get_log("browser")
    severe = [e for e in logs if e.get("level") == "SEVERE"]
    assert not severe, severe
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
