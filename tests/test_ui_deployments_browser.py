"""The dashboard's deployments view in a real browser (Debian's Chromium, headless, through Selenium and
/usr/bin/chromedriver) against a real uvicorn server on 127.0.0.1: a deployment the real rollout controller advanced
and then rolled back on a safety violation (traces recorded as the model server records them, graded by the real
online graders) — the list shows its mode and status; its page shows the KPIs per arm, the chart of KPIs over time
with the rollback marked, and each step with its evidence. Skipped only when Chromium or its driver is missing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from browser_helpers import chromium, needs_chromium
from proc_helpers import free_port
from agentrft.gate import rollout as ro
from agentrft.store import RunStore
from test_rollout_controller import FORBIDDEN, POLICY, serve, traffic

pytestmark = needs_chromium



def test_deployments_view_shows_modes_weights_kpis_and_the_rollback_with_evidence(tmp_path):
    import uvicorn
    from selenium.webdriver.common.by import By

    from agentrft.ui import make_server_app

    store = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
    ro.create_deployment(store, "support-agent", production="v1", candidate="v2", mode="canary", policy=POLICY)
    judges: dict = {}
    traffic(store, "support-agent", 110, 0.1)
    assert ro.tick(store, "support-agent", judges)["action"] == "advance"  # 10 % → 50 %
    traffic(store, "support-agent", 6, 0.5)
    serve(store, "support-agent", "candidate", tools=("lookup", FORBIDDEN))
    assert ro.tick(store, "support-agent", judges)["action"] == "rollback"
    ro.create_deployment(store, "other", production="v1", candidate="v3", mode="shadow", policy=POLICY)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_server_app(store, token="tok"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    driver = chromium(1360, 1400)
    shots = Path(os.environ.get("AGENTRFT_UI_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}/ui"
    try:
        driver.get(f"{base}/deployments?token=tok")  # the cookie login, then the list
        rows = {r.get_attribute("data-name"): r.text for r in driver.find_elements(By.CSS_SELECTOR, "tr.deployment")}
        assert set(rows) == {"support-agent", "other"}
        assert "full" in rows["support-agent"] and "rolled_back" in rows["support-agent"]
        assert "canary" not in rows["support-agent"] and "shadow" in rows["other"] and "active" in rows["other"]
        driver.find_element(By.LINK_TEXT, "deployments")  # in the navigation bar
        driver.find_element(By.LINK_TEXT, "support-agent").click()
        assert "rolled_back" in driver.find_element(By.ID, "summary").text
        arms = {r.get_attribute("data-arm"): [td.text for td in r.find_elements(By.TAG_NAME, "td")]
                for r in driver.find_elements(By.CSS_SELECTOR, "tr.arm")}
        assert set(arms) == {"production", "candidate"}  # the step the rollback ended
        assert arms["candidate"][1] == "4" and arms["candidate"][5] == "1"  # requests, its one safety violation
        assert arms["production"][5] == "0" and "efficiency 1.000" in arms["production"][6]
        svg = driver.find_element(By.CSS_SELECTOR, "#chart svg")
        assert svg.find_elements(By.TAG_NAME, "polyline") and "rollback (safety)" in svg.text
        assert "advance" in svg.text
        steps = driver.find_elements(By.CSS_SELECTOR, "#steps tr.step")
        assert [s.get_attribute("class").split()[1] for s in steps] == ["advance", "rollback"]
        assert "(automatic)" in steps[1].text and "controller" in steps[1].text
        steps[1].find_element(By.TAG_NAME, "summary").click()
        ev = steps[1].find_element(By.TAG_NAME, "pre").text
        assert "forbidden_tool" in ev and '"rule": "safety"' in ev
        driver.save_screenshot(str(shots / "deployment.png"))
        driver.get(f"{base}/deployments/nope")
        assert "no deployment named 'nope'" in driver.page_source
    finally:
        driver.quit()
        server.should_exit = True
        th.join(30)
        store.close()
