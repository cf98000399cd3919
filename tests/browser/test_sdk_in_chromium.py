"""bespoke.js in a real headless Chromium, on the demo storefront the service serves, with
a publishable key: nothing is sent or stored before consent; clicks and add-to-cart reach
the online store; a login merges the anonymous history and the next render differs;
opting out stops tracking and clears the identifiers; closing a tab mid-batch loses no
event. A screenshot of the storefront is saved under test-artifacts/."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bespoke.serving.db import Database, sqlite_path
from bespoke.serving.local import local_settings

from .conftest import ARTIFACTS


def _open(browser: Any, served: dict, flush_ms: int = 200) -> None:
    browser.get(f"{served['url']}/demo/?key={served['key']}&flush_ms={flush_ms}")
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return !!window.bespoke"))


def _api_requests(browser: Any) -> list[str]:
    """The API calls the page made since the last look (Chromium's network log)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            path = urlsplit(message["params"]["request"]["url"]).path
            if path.startswith("/v1/"):
                urls.append(path)
    return urls


def _inbox(served: dict, anonymous_id: str) -> list[tuple[str, str | None]]:
    """(event type, item) of what the online store received for the browser, oldest first."""
    database = Database(sqlite_path(local_settings(served["home"]).online_store_url or ""))
    with database.read() as con:
        rows = con.execute(
            "SELECT event_type, item_id FROM inbox WHERE anonymous_id = ? ORDER BY seq",
            (anonymous_id,),
        ).fetchall()
    database.close()
    return [(kind, item) for kind, item in rows]


def _until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _state(browser: Any) -> dict:
    return browser.execute_script("return bespoke.state()")


def _slot_items(browser: Any) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#for-you [data-bespoke-item]'))"
        ".map(e => e.getAttribute('data-bespoke-item'))"
    )


def _accept(browser: Any) -> str:
    browser.find_element(By.ID, "accept").click()
    WebDriverWait(browser, 30).until(lambda b: len(_slot_items(b)) == 6)
    return _state(browser)["anonymousId"]


def test_nothing_is_sent_or_stored_before_consent(browser, served) -> None:
    _open(browser, served)
    for card in browser.find_elements(By.CSS_SELECTOR, "#catalog [data-bespoke-item]")[:3]:
        card.click()
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    time.sleep(1.0)  # longer than the page's flush interval
    assert _api_requests(browser) == []
    assert browser.get_cookies() == []
    assert browser.execute_script("return window.localStorage.length") == 0
    assert _state(browser) == {"consent": None, "anonymousId": None, "userId": None,
                               "queued": 0, "tracking": False}  # fmt: skip
    assert browser.find_element(By.ID, "consent").is_displayed()


def test_clicks_and_add_to_cart_reach_the_online_store(browser, served) -> None:
    _open(browser, served)
    anonymous = _accept(browser)
    assert browser.get_cookie("bespoke_aid")["value"] == anonymous
    cards = browser.find_elements(By.CSS_SELECTOR, "#catalog [data-bespoke-item]")
    picked = [card.get_attribute("data-bespoke-item") for card in cards[:2]]
    cards[0].find_element(By.TAG_NAME, "h3").click()
    cards[1].find_element(By.CSS_SELECTOR, "[data-bespoke-add-to-cart]").click()
    wanted = {("click", picked[0]), ("add_to_cart", picked[1])}
    assert _until(lambda: wanted <= set(_inbox(served, anonymous)))
    events = [e for e in _inbox(served, anonymous) if e[0] != "impression"]
    assert ("view", None) in events  # the page view
    assert ("click", picked[0]) in events and ("add_to_cart", picked[1]) in events
    assert ("click", picked[1]) not in events  # the cart button is not also a click
    shown = set(_slot_items(browser))
    assert {item for kind, item in _inbox(served, anonymous) if kind == "impression"} == shown
    requests = _api_requests(browser)
    assert "/v1/consent" in requests[0] and any("/v1/events" in r for r in requests)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "storefront.png"))
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    assert _until(lambda: ("scroll", None) in _inbox(served, anonymous))


def test_a_login_merges_the_anonymous_history_and_the_next_render_differs(browser, served) -> None:
    _open(browser, served)
    anonymous = _accept(browser)
    for card in browser.find_elements(By.CSS_SELECTOR, "#catalog [data-bespoke-item] h3")[:3]:
        card.click()
    browser.execute_script("return bespoke.flush()")
    browser.execute_script("return bespoke.render()")
    before = _until(lambda: _slot_items(browser))
    login = browser.find_element(By.CSS_SELECTOR, "#login input")
    login.send_keys("1")  # ML-100K's user 1: 272 ratings of their own
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(browser, 30).until(
        lambda b: (
            b.find_element(By.ID, "who").text == "logged in as 1"
            and _slot_items(b)
            and _slot_items(b) != before
        )
    )
    after = _slot_items(browser)
    assert after != before
    store = local_settings(served["home"])
    from bespoke.serving.store import open_store

    merged = open_store(store).profile(anonymous, "ml-100k", anonymous=True)
    assert merged.merged_into == "1"
    user = open_store(store).profile("1", "ml-100k")
    clicked = [e.item_id for e in user.recent if e.event_type == "click"]
    assert len(clicked) >= 3  # the clicks made before logging in are now theirs


def test_opting_out_stops_tracking_and_clears_the_identifiers(browser, served) -> None:
    _open(browser, served)
    anonymous = _accept(browser)
    assert _until(lambda: _inbox(served, anonymous))
    _api_requests(browser)  # forget what came before
    browser.find_element(By.ID, "opt-out").click()
    WebDriverWait(browser, 10).until(lambda b: not _state(b)["tracking"])
    stored = len(_inbox(served, anonymous))
    for card in browser.find_elements(By.CSS_SELECTOR, "#catalog [data-bespoke-item] h3")[:4]:
        card.click()
    time.sleep(1.0)
    assert len(_inbox(served, anonymous)) == stored
    assert browser.get_cookie("bespoke_aid") is None
    assert browser.execute_script("return window.localStorage.length") == 0
    assert _state(browser)["anonymousId"] is None
    sent = _api_requests(browser)
    assert "/v1/events" not in " ".join(sent)  # only the withdrawal, and a stranger's page
    assert any(r.endswith("/v1/consent") for r in sent)


def test_closing_a_tab_mid_batch_loses_no_event(browser, served) -> None:
    _open(browser, served, flush_ms=60_000)  # nothing would leave before the tab closes
    anonymous = _accept(browser)
    demo = browser.current_window_handle
    cards = browser.find_elements(By.CSS_SELECTOR, "#catalog [data-bespoke-item] h3")
    clicked = [c.find_element(By.XPATH, "..").get_attribute("data-bespoke-item") for c in cards[:5]]
    for card in cards[:5]:
        card.click()
    assert _state(browser)["queued"] >= 5
    browser.switch_to.new_window("tab")
    other = browser.current_window_handle
    browser.switch_to.window(demo)
    browser.close()  # mid-batch: the queue leaves in a beacon
    browser.switch_to.window(other)
    arrived = _until(lambda: [i for k, i in _inbox(served, anonymous) if k == "click"] == clicked)
    assert arrived, _inbox(served, anonymous)
