"""Screenshots of every studio view for the docs (docs/studio_*.png), on the embedded default and the sample gallery.

    python apps/take_screenshots.py [--out docs] [--model DIR] [--gallery DIR]

Starts ``duetgen studio --headless`` on a free port, drives it with headless Chromium (selenium), and always stops
the server. Needs chromium and chromedriver (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_present(text: str):
    return lambda d: text in d.find_element(By.TAG_NAME, "body").text


def click_tab(driver, label: str) -> None:
    next(t for t in driver.find_elements(By.CSS_SELECTOR, '[role="tab"]') if label in t.text).click()


def click_button(driver, label: str) -> None:
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: [b for b in d.find_elements(By.XPATH, f"//button[.//p[text()='{label}']]") if b.is_displayed()]
    )[0].click()


def star(radius: float = 95, points: int = 5, substeps: int = 3) -> list[tuple[int, int]]:
    corners = []
    for i in range(2 * points + 1):
        r = radius if i % 2 == 0 else radius * 0.45
        a = -math.pi / 2 + i * math.pi / points
        corners.append((r * math.cos(a), r * math.sin(a)))
    path = [corners[0]]
    for (xa, ya), (xb, yb) in zip(corners, corners[1:], strict=False):
        path += [(xa + (xb - xa) * i / substeps, ya + (yb - ya) * i / substeps) for i in range(1, substeps + 1)]
    return [(int(round(x)), int(round(y))) for x, y in path]


def draw(driver, path: list[tuple[int, int]]) -> None:
    def find(d):
        for host in d.find_elements(By.CSS_SELECTOR, '[data-testid="stBidiComponentIsolated"]'):
            try:
                found = host.shadow_root.find_elements(By.CSS_SELECTOR, "canvas.upper-canvas")
            except Exception:  # noqa: BLE001
                continue
            if found:
                return found[0]
        return False

    canvas = WebDriverWait(driver, TIMEOUT).until(find)
    chain = ActionChains(driver, duration=15).move_to_element_with_offset(canvas, *path[0]).click_and_hold()
    for (xa, ya), (xb, yb) in zip(path, path[1:], strict=False):
        chain.move_by_offset(xb - xa, yb - ya)
    chain.release().perform()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs"))
    p.add_argument("--model", default=None)
    p.add_argument("--gallery", default=None)
    p.add_argument("--words", default="red with stripes")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="studio_shots_"))
    port = free_port()
    cmd = [sys.executable, "-m", "duetgen", "studio", "--headless", "--port", str(port), "--cache-dir", str(work)]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--gallery", args.gallery] if args.gallery else []
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,1500",
                "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError as err:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log_tail = (work / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"the studio did not start: {log_tail}") from err
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        wait = WebDriverWait(driver, TIMEOUT)
        driver.get(url)
        wait.until(text_present("Sketch + words"))
        wait.until(text_present("photos ·"))
        draw(driver, star())
        wait.until(text_present("What the model sees"))
        driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Words"]').send_keys(args.words, Keys.ENTER)
        wait.until(text_present("sketch + words · answered in"))
        wait.until(lambda d: d.find_element(By.XPATH, "//label[.//p[text()='Verify by silhouette']]")).click()
        wait.until(text_present("sketch + words · verified · answered in"))
        time.sleep(2)
        driver.save_screenshot(str(out / "studio_retrieve.png"))

        click_tab(driver, "Generate")
        click_button(driver, "Generate")
        wait.until(text_present("Done in"))
        time.sleep(2)
        driver.save_screenshot(str(out / "studio_generate.png"))

        click_tab(driver, "Attribute transfer")
        click_button(driver, "Transfer attributes")
        wait.until(text_present("read as"))
        time.sleep(2)
        driver.save_screenshot(str(out / "studio_transfer.png"))

        click_tab(driver, "Scene retrieval")
        click_button(driver, "Build 48 demo scenes")
        wait.until(text_present("scenes · answered in"))
        wait.until(lambda d: d.find_element(By.XPATH, "//label[.//p[text()='Verify objects by shape']]")).click()
        wait.until(text_present("scenes · objects verified · answered in"))
        time.sleep(2)
        driver.save_screenshot(str(out / "studio_scenes.png"))
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        print(f"screenshots in {out}; browser console errors: {len(severe)}")
        for e in severe:
            print("  ", e.get("message", "")[:200])
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
