"""The chat page in a real headless Chromium (Selenium): ask, see the answer, its score, the
candidates and the baseline; the conversation lives in the page and a repeated question is not answered
the same way twice. Skipped, with the reason, where no browser is installed (Debian: apt-get
install chromium chromium-driver)."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture(scope="module")
def served(tiny_pipe):
    """The tiny run served by uvicorn on a free loopback port (penalty 1: a repeat always changes)."""
    import uvicorn

    from cellnet_core.conversations import ConversationSettings
    from cellnet_serve import ServeSettings, Service, create_app
    from cellnet_serve.command import bind

    service = Service(lambda: tiny_pipe, ServeSettings(conversations=ConversationSettings(penalty=1.0)), name="tiny")
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert service.wait_ready(30)
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    from cellnet_serve.testing import browser_missing, chromium

    why = browser_missing()
    if why:
        pytest.skip(why)
    try:
        drv = chromium()
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start is a skip with its reason
        pytest.skip(f"Chromium did not start: {str(exc).splitlines()[0]}")
    yield drv
    drv.quit()


def _ask(drv, wait, text, n):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = drv.find_element(By.ID, "question")
    box.send_keys(text, Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn[data-state]")) >= n)
    return drv.find_elements(By.CSS_SELECTOR, ".turn")[n - 1]


def test_chat_page_in_chromium(served, browser, tiny_pipe):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(served + "/")
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-ready") == "1")
    assert "ready" in browser.find_element(By.ID, "status").text
    conversation = browser.find_element(By.ID, "conversation-id").text
    assert len(conversation) == 8

    turn = _ask(browser, wait, "good morning", 1)
    assert turn.get_attribute("data-state") == "answered"
    expected = tiny_pipe.answer(["good morning"], k=5)[0]
    answer = turn.find_element(By.CSS_SELECTOR, ".a")
    assert answer.text.startswith(expected.text) and f"score {expected.score:.3f}" in answer.text
    rows = turn.find_elements(By.CSS_SELECTOR, "table.cands tr")
    assert len(rows) == 5 and rows[0].text.startswith(expected.text)
    assert "baseline:" in turn.find_element(By.CSS_SELECTOR, ".base").text

    again = _ask(browser, wait, "good morning", 2)  # the same conversation: the answer just given ranks lower
    second = again.find_element(By.CSS_SELECTOR, ".a").text
    assert not second.startswith(expected.text)

    browser.refresh()  # the conversation stays with the page
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-ready") == "1")
    assert browser.find_element(By.ID, "conversation-id").text == conversation
    browser.find_element(By.ID, "new-conversation").click()
    assert browser.find_element(By.ID, "conversation-id").text != conversation
    assert not browser.find_elements(By.CSS_SELECTOR, ".turn")


def test_openapi_page_renders_in_chromium(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(served + "/docs")  # Swagger UI from the package itself, nothing from a CDN
    WebDriverWait(browser, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 7)
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/answer", "/v1/embed", "/v1/think", "/v1/decode", "/healthz", "/readyz", "/metrics"} <= paths
