"""The demo page in a real headless browser (Debian's chromium, driven by Selenium): pick a user,
see the history and the top 10, click a recommendation, watch both change (the streaming path).

Under CI (``CI`` set, as ``.ci/run`` does) a missing browser fails the test instead of skipping it."""

from __future__ import annotations

import os
import shutil
import urllib.request

import pytest

from tests.serving.conftest import Server


def browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        message = "Debian's chromium and chromium-driver are needed for the browser test (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,800",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_demo_page_streams_a_click_into_the_recommendations(server: Server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = browser_or_skip()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10)
        user = browser.find_element(By.ID, "user").get_attribute("value")
        note = browser.find_element(By.ID, "history-note").text
        events = int(note.split()[0])
        first = browser.find_elements(By.CSS_SELECTOR, "#recommendations li")[0]
        clicked = first.get_attribute("data-item")
        before = [li.get_attribute("data-item") for li in browser.find_elements(By.CSS_SELECTOR, "#recommendations li")]
        first.click()
        wait.until(lambda b: b.find_element(By.ID, "history-note").text.startswith(f"{events + 1} events"))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10)
        history = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#history li")]
        after = [li.get_attribute("data-item") for li in browser.find_elements(By.CSS_SELECTOR, "#recommendations li")]
        assert f"({clicked})" in history[-1]  # the clicked item is the newest event
        assert clicked not in after and after != before  # seen items leave the ranking; the state moved
        assert "streaming state" in browser.find_element(By.ID, "recommendation-note").text
        assert user
    finally:
        browser.quit()


def test_the_demo_page_asks_for_the_key_of_a_server_that_has_one(trained, tmp_path):
    """A click posts an event: the page asks for the key (a prompt), sends it, and asks again when refused."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    server = Server(trained["tim4rec"], tmp_path / "users.sqlite", "--api-key", "right-key").start()
    browser = browser_or_skip()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10)
        note = browser.find_element(By.ID, "history-note").text
        events = int(note.split()[0])
        browser.find_elements(By.CSS_SELECTOR, "#recommendations li")[0].click()
        for answer in ("wrong-key", "right-key"):  # refused once, then accepted
            prompt = wait.until(expected_conditions.alert_is_present())
            prompt.send_keys(answer)
            prompt.accept()
        wait.until(lambda b: b.find_element(By.ID, "history-note").text.startswith(f"{events + 1} events"))
    finally:
        browser.quit()
        server.stop()
    assert "right-key" not in server.stderr


def test_the_api_docs_render_without_a_network(server: Server):
    """Swagger UI (/docs) and ReDoc (/redoc) load their scripts from the server itself (fastapi-offline's
    assets), never from a CDN, and render the service's endpoints."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = browser_or_skip()
    try:
        for page, rendered in (("/docs", ".swagger-ui .opblock"), ("/redoc", "[data-section-id]")):
            with urllib.request.urlopen(server.url + page, timeout=30) as response:
                served = response.read().decode()
            assert "cdn" not in served.lower(), f"{page} names a CDN"
            browser.get(server.url + page)
            WebDriverWait(browser, 60).until(lambda b, css=rendered: b.find_elements(By.CSS_SELECTOR, css))
            assert "/users/{user}/events" in browser.find_element(By.TAG_NAME, "body").text
            # every script and stylesheet the rendered page holds comes from the server itself (ReDoc's own
            # "by Redocly" logo in its sidebar is an image link to its maker, not an asset the page needs)
            assets = [
                element.get_attribute(attribute)
                for selector, attribute in (("script[src]", "src"), ("link[rel='stylesheet']", "href"))
                for element in browser.find_elements(By.CSS_SELECTOR, selector)
            ]
            assert assets, f"{page} loads no script"
            assert all(asset.startswith(server.url + "/") for asset in assets), (page, assets)
    finally:
        browser.quit()
