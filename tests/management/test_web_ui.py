"""The web UI in a real headless browser (Debian's Chromium through Selenium): log in, create
a queue, publish a message, see it counted, get it back, set a policy; the overview's
screenshot is kept as a test artefact (test-artifacts/ in the repository, or
$LEVERET_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.management.http import Api
from tests.support.browser import chromium_paths, headless_chromium
from tests.support.node_process import REPO, NodeProcess

WAIT_S = 20


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    paths, why = chromium_paths()
    if paths is None:
        print(f"web UI tests skipped: {why}")
        pytest.skip(f"chromium could not be installed: {why}")
    driver = headless_chromium(*paths)
    try:
        yield driver
    finally:
        driver.quit()


def artefacts() -> Path:
    path = Path(os.environ.get("LEVERET_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_ui_logs_in_creates_publishes_gets_and_sets_a_policy(browser: Any, http_node: NodeProcess,
                                                                  api: Api) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)

    def fill(form_id: str, **values: str) -> None:
        form = browser.find_element(By.ID, form_id)
        for name, value in values.items():
            field = form.find_element(By.NAME, name)
            if field.tag_name == "select":
                Select(field).select_by_visible_text(value)
            else:
                field.clear()
                field.send_keys(value)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    browser.get(http_node.management_url + "/")
    # A wrong password is refused on the login page.
    wait.until(ec.presence_of_element_located((By.ID, "login")))
    browser.find_element(By.ID, "username").send_keys("guest")
    browser.find_element(By.ID, "password").send_keys("wrong")
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "login"), "Login failed"))
    browser.find_element(By.ID, "username").send_keys("guest")
    browser.find_element(By.ID, "password").send_keys("guest")
    browser.find_element(By.ID, "login-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), "guest (administrator)"))
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Overview"))

    # Create a queue from the queues page.
    browser.get(http_node.management_url + "/#/queues")
    wait.until(ec.presence_of_element_located((By.ID, "add-queue")))
    fill("add-queue", vhost="/", name="ui-q", durable="true")
    link = wait.until(ec.element_to_be_clickable((By.LINK_TEXT, "ui-q")))
    assert api.ok("GET", "/api/queues/%2F/ui-q")["durable"] is True

    # Publish on the queue's page and see it counted.
    link.click()
    wait.until(ec.presence_of_element_located((By.ID, "publish")))
    fill("publish", payload="hello from the browser")
    wait.until(ec.text_to_be_present_in_element((By.ID, "queue-total"), "1"))
    assert api.ok("GET", "/api/queues/%2F/ui-q")["messages_ready"] == 1

    # Get it back, taking it off the queue.
    fill("get", ackmode="ack_requeue_false")
    wait.until(ec.text_to_be_present_in_element((By.ID, "got-messages"), "hello from the browser"))
    assert api.ok("GET", "/api/queues/%2F/ui-q")["messages"] == 0

    # Set a policy, and see it applied to the queue.
    browser.get(http_node.management_url + "/#/policies")
    wait.until(ec.presence_of_element_located((By.ID, "set-policy")))
    fill("set-policy", vhost="/", name="ui-policy", pattern="^ui-", **{"apply-to": "queues"},
         definition='{"max-length": 5}')
    wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "main"), "ui-policy"))
    assert api.ok("GET", "/api/policies/%2F/ui-policy")["definition"] == {"max-length": 5}
    assert api.ok("GET", "/api/queues/%2F/ui-q")["policy"] == "ui-policy"

    # The overview, charted, kept as an artefact.
    browser.get(http_node.management_url + "/#/overview")
    wait.until(ec.presence_of_element_located((By.TAG_NAME, "canvas")))
    screenshot = artefacts() / "management-overview.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    api.ok("DELETE", "/api/policies/%2F/ui-policy")
    api.ok("DELETE", "/api/queues/%2F/ui-q")


def test_the_ui_is_served_with_the_api(api: Api) -> None:
    index = api.get("/", auth=False)
    assert index.status == 200 and "<title>Leveret Management</title>" in index.text
    assert api.get("/app.js", auth=False).status == 200
    assert api.get("/api/nope").body == {"error": "Object Not Found", "reason": "Not Found"}


def test_the_overview_charts_the_nodes_history_after_a_publish_load(browser: Any, http_node: NodeProcess,
                                                                    api: Api) -> None:
    """Published messages, held in a queue across two of the node's 5 s samples, show in the
    overview's charts from its history (points above 0), over the range chosen."""
    import time

    import pika
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    conn = pika.BlockingConnection(pika.URLParameters(http_node.url))
    try:
        ch = conn.channel()
        ch.queue_declare("ui-chart")
        deadline = time.monotonic() + 12  # spans at least two samples
        while time.monotonic() < deadline:
            for _ in range(20):
                ch.basic_publish("", "ui-chart", b"load")
            conn.process_data_events(0.2)
    finally:
        conn.close()
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(http_node.management_url + "/#/overview")
    wait.until(ec.presence_of_element_located((By.ID, "chart-range")))
    Select(browser.find_element(By.ID, "chart-range")).select_by_visible_text("Last minute")

    def drawn() -> dict[str, list[str]]:
        # Read in one script: the page is drawn again every 5 s.
        return browser.execute_script(
            "const out = {}; for (const id of ['chart-queued', 'chart-rates']) {"
            " const c = document.getElementById(id); out[id] = c ? [c.dataset.points, c.dataset.nonzero,"
            " c.parentElement.textContent] : null; } return out;")

    def charted(_: Any) -> dict[str, list[str]] | None:
        now = drawn()
        # Drawn over the minute chosen (the page may still show the earlier range a moment):
        # 13 samples of the lengths at 5 s, 12 rates between them.
        ready = (now["chart-queued"] or ["", "0"])[0] == "13" and (now["chart-rates"] or ["", "0"])[0] == "12"
        return now if ready and all(int(v[1]) > 0 for v in now.values()) else None

    shown = wait.until(charted)
    assert "(last minute)" in shown["chart-queued"][2], shown
    screenshot = artefacts() / "management-overview-charts.png"
    assert browser.save_screenshot(str(screenshot))
    api.ok("DELETE", "/api/queues/%2F/ui-chart")


def test_samples_on_one_node_and_bad_ranges(http_node: NodeProcess, api: Api) -> None:
    """RabbitMQ's samples on a queue of the node itself; a range that cannot be drawn is 400."""
    import time

    import pika

    conn = pika.BlockingConnection(pika.URLParameters(http_node.url))
    try:
        ch = conn.channel()
        ch.queue_declare("samples-q")
        for _ in range(30):
            ch.basic_publish("", "samples-q", b"x")
        conn.process_data_events(0.1)
    finally:
        conn.close()
    query = "lengths_age=600&lengths_incr=5"
    deadline = time.monotonic() + 12
    details: dict[str, Any] = {}
    while time.monotonic() < deadline:
        details = api.ok("GET", f"/api/queues/%2F/samples-q?{query}")["messages_details"]
        if details["samples"][0]["sample"] == 30:
            break
        time.sleep(0.5)
    assert len(details["samples"]) == 121 and details["samples"][0]["sample"] == 30, details
    assert details["samples"][-1]["sample"] == 0  # ten minutes ago it did not exist
    assert "samples" not in api.ok("GET", "/api/queues/%2F/samples-q")["message_stats"].get("publish_details", {})
    bad = api.get("/api/overview?msg_rates_age=60&msg_rates_incr=0")
    assert bad.status == 400 and bad.body["error"] == "bad_request", bad.text
    api.ok("DELETE", "/api/queues/%2F/samples-q")
