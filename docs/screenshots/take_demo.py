"""Take the README's screenshot of the demo page: ``python docs/screenshots/take_demo.py BEST_PT [USER]``.

Starts ``tim4rec serve`` on a free port with a throw-away database, opens the page in headless
chromium (Debian's chromium and chromium-driver), picks the user, clicks the first
recommendation once (an event: the list moves) and saves ``docs/screenshots/demo.png``; then opens the
API docs (Swagger UI, served without a network) and saves ``docs/screenshots/api-docs.png``.
"""

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait


def main(checkpoint: str, user: str | None = None) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = Path(tempfile.mkdtemp()) / "demo.sqlite"
    server = subprocess.Popen([sys.executable, "-m", "tim4rec", "serve", checkpoint, "--port", str(port), "--db",
                               str(database), "--threads", "1"])  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,720"):
            options.add_argument(argument)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 120)
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10)
            if user:
                Select(browser.find_element(By.ID, "user")).select_by_value(user)
                time.sleep(1)
                wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10)
            events = int(browser.find_element(By.ID, "history-note").text.split()[0])
            browser.find_elements(By.CSS_SELECTOR, "#recommendations li")[0].click()
            wait.until(lambda b: b.find_element(By.ID, "history-note").text.startswith(f"{events + 1} events"))
            time.sleep(0.5)
            browser.save_screenshot(str(Path(__file__).with_name("demo.png")))
            browser.get(url + "/docs")
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
            time.sleep(0.5)
            browser.save_screenshot(str(Path(__file__).with_name("api-docs.png")))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main(*sys.argv[1:])
