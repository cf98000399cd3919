"""Channels benchmark: the browser SDK in a real headless Chromium against the served
service on loopback, and an e-mail campaign, on ML-100K.

- ``sdk_gzip_bytes``: ``/sdk/v1/bespoke.js`` minified and gzipped, as served (target ≤ 8 KB);
- ``events_lost_on_tab_close``: clicks queued in a page whose flush is a minute away, the
  tab then closed; events that never reached the online store, over all rounds (target 0);
- ``click_to_profile_ms``: from the click (the event's time, set by the SDK in the page) to
  the online store applying it to the profile (the store's receive time), p50 / p95 /
  max over the clicks, on loopback (target ≤ 100 ms; the SDK batches for 50 ms);
- ``campaign_emails_per_s``: ``bespoke campaign render`` for the largest behavioural segment,
  every member with marketing consent (the engine's recommendations, k = 5, per e-mail).

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test-system-packages``).

    python bench/channels.py --out FILE [--datasets-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

COMMAND = "python bench/channels.py --out FILE"
ROUNDS, CLICKS_PER_ROUND = 5, 10
LATENCY_CLICKS = 40
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--window-size=1280,1000")  # fmt: skip


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options,
                            service=Service(executable_path=shutil.which("chromedriver")))  # fmt: skip


def _inbox(home: Path, anonymous_id: str, kind: str = "click") -> list[tuple[Any, ...]]:
    from bespoke.serving.db import Database, sqlite_path
    from bespoke.serving.local import local_settings

    database = Database(sqlite_path(local_settings(home).online_store_url or ""))
    with database.read() as con:
        rows = con.execute(
            "SELECT item_id, timestamp, received_at FROM inbox WHERE anonymous_id = ? "
            "AND event_type = ? ORDER BY seq", (anonymous_id, kind)).fetchall()  # fmt: skip
    database.close()
    return rows


def _wait(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def _page(driver: Any, url: str, key: str, flush_ms: int) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/demo/?key={key}&flush_ms={flush_ms}")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !!window.bespoke"))
    driver.find_element(By.ID, "accept").click()
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return bespoke.state().tracking"))
    return driver.execute_script("return bespoke.state().anonymousId")


def browser_figures(url: str, home: Path, key: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    lost, sent = 0, 0
    for _ in range(ROUNDS):  # a fresh browser (no cookie, no storage) each round
        driver = _browser()
        try:
            anonymous = _page(driver, url, key, flush_ms=60_000)
            demo = driver.current_window_handle
            cards = driver.find_elements(By.CSS_SELECTOR, "#catalog [data-bespoke-item] h3")
            for card in cards[:CLICKS_PER_ROUND]:
                card.click()
            driver.switch_to.new_window("tab")
            other = driver.current_window_handle
            driver.switch_to.window(demo)
            driver.close()
            driver.switch_to.window(other)
            _wait(lambda a=anonymous: len(_inbox(home, a)) >= CLICKS_PER_ROUND, 10)
        finally:
            driver.quit()
        sent += CLICKS_PER_ROUND
        lost += max(0, CLICKS_PER_ROUND - len(_inbox(home, anonymous)))
    driver = _browser()
    try:
        anonymous = _page(driver, url, key, flush_ms=50)
        cards = driver.find_elements(By.CSS_SELECTOR, "#catalog [data-bespoke-item] h3")
        for index in range(LATENCY_CLICKS):
            cards[index % len(cards)].click()
            _wait(lambda i=index, a=anonymous: len(_inbox(home, a)) > i, 5)
            time.sleep(0.05)
        delays = [(received - at) / 1000 for _, at, received in _inbox(home, anonymous)]
    finally:
        driver.quit()
    values = np.array(delays)
    return {
        "events_lost_on_tab_close": lost,
        "tab_close_events_sent": sent,
        "click_to_profile_ms": {
            "p50": round(float(np.percentile(values, 50)), 1),
            "p95": round(float(np.percentile(values, 95)), 1),
            "max": round(float(values.max()), 1),
            "clicks": len(values),
        },
    }


def campaign_figures(home: Path, scratch: Path) -> dict[str, Any]:
    from bespoke.channels.campaigns import render_campaign
    from bespoke.features.lake import Lake
    from bespoke.features.schema import ConsentPurpose
    from bespoke.privacy.consent import ConsentLedger, ConsentSource
    from bespoke.segments.train import train_segments
    from bespoke.serving.db import Database, sqlite_path
    from bespoke.serving.local import local_settings

    settings = local_settings(home)
    train_segments(settings, "ml-100k", "1998-04-23")
    segment, members = Lake(settings.lake_url or "").connect().execute(
        "SELECT segment, list(person) AS people FROM segments_history WHERE valid_to IS NULL "
        "GROUP BY 1 ORDER BY len(people) DESC LIMIT 1").fetchone()  # fmt: skip
    ledger = ConsentLedger(Database(sqlite_path(settings.online_store_url or "")))
    for person in members:
        ledger.record("ml-100k", {ConsentPurpose.MARKETING: True}, source=ConsentSource.IMPORT,
                      user_id=person)  # fmt: skip
    template = (
        Path(__file__).resolve().parents[1] / "src/channels/templates/recommendations.html.j2"
    )
    result = render_campaign(settings, segment=segment, template=template,
                             out_dir=scratch / "campaign", dataset="ml-100k", k=5)  # fmt: skip
    return {"campaign_emails_per_s": round(result.rate, 1), "campaign_emails": result.rendered,
            "campaign_seconds": round(result.seconds, 2), "campaign_segment": segment}  # fmt: skip


def run(datasets_dir: Path, console: Console) -> dict[str, Any]:
    from bespoke.serving.keys import ApiKeys
    from bespoke.serving.local import (
        local_settings,
        prepare_local_home,
        start_local_service,
        stop_local_service,
    )

    with tempfile.TemporaryDirectory(prefix="bespoke-bench-channels-") as scratch:
        home = Path(scratch) / "home"
        console.print("preparing ML-100K (ingest, EASE and ranker @champions)…")
        prepare_local_home(home, datasets_dir / "ml-100k", key_name="bench")
        url, process = start_local_service(home)
        try:
            key = ApiKeys(local_settings(home).online_store_url or "").create(
                "bench-page", publishable=True, origins=[url]
            )
            wire = httpx.get(f"{url}/sdk/v1/bespoke.js", headers={"Accept-Encoding": "gzip"})
            figures: dict[str, Any] = {
                "sdk_gzip_bytes": len(gzip.compress(wire.content, compresslevel=9)),
                "sdk_minified_bytes": len(wire.content),
            }
            console.print("Chromium: tab closes and click latency…")
            figures.update(browser_figures(url, home, key))
        finally:
            stop_local_service(process)
        console.print("campaign…")
        figures.update(campaign_figures(home, Path(scratch)))
    return figures


def show(figures: dict[str, Any], console: Console) -> None:
    table = Table(title="Channels on ML-100K (loopback, headless Chromium)", header_style="bold")
    for column in ("figure", "value", "target"):
        table.add_column(column)
    latency = figures["click_to_profile_ms"]
    rows = [
        ("sdk_gzip_bytes", f"{figures['sdk_gzip_bytes']} B", "≤ 8192 B"),
        ("events_lost_on_tab_close",
         f"{figures['events_lost_on_tab_close']} of {figures['tab_close_events_sent']}", "0"),
        ("click_to_profile_ms p50 / p95 / max",
         f"{latency['p50']} / {latency['p95']} / {latency['max']} ms", "≤ 100 ms"),
        ("campaign_emails_per_s", f"{figures['campaign_emails_per_s']} "
         f"({figures['campaign_emails']} e-mails)", ""),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)
    goals = {
        "sdk_gzip_bytes": figures["sdk_gzip_bytes"] <= 8192,
        "events_lost_on_tab_close": figures["events_lost_on_tab_close"] == 0,
        "click_to_profile_ms": latency["p95"] <= 100,
    }
    missed = [name for name, met in goals.items() if not met]
    console.print(f"goals missed: {', '.join(missed)}" if missed else "every goal met")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets-dir", type=Path, default=os.environ.get("BESPOKE_DATASETS_DIR"))
    args = parser.parse_args()
    if args.datasets_dir is None:
        parser.error("set BESPOKE_DATASETS_DIR or pass --datasets-dir")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        parser.error("needs Debian's chromium and chromium-driver (scripts/test-system-packages)")
    console = Console()
    start = time.perf_counter()
    figures = run(Path(args.datasets_dir), console)
    figures["total_seconds"] = round(time.perf_counter() - start, 1)
    figures["command"] = COMMAND
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    show(figures, console)
    console.print(f"{figures['total_seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
