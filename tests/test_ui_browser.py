"""The dashboard in a real browser: Debian's Chromium (headless, driven by Selenium through /usr/bin/chromedriver)
against a real uvicorn server on 127.0.0.1, over the SQLite store a real training run writes.

The run: a tiny Llama-style model built here, warm-started with a few supervised steps on the lookup task's demos
(so it calls the `lookup` tool), then 3 GRPO steps with evals — in a background thread of this process, writing the
store while the browser watches. To see a curve gain a point without racing the run, the run's store holds the
record of train step 2 until the test has read the curve (a threading.Event): the run cannot end before the page
has loaded, and the point the test waits for is one the run writes while the page is open.

Screenshots of each page go to a temporary directory (or to $AGENTRFT_UI_SCREENSHOTS: `docs/ui` regenerates the
docs' pictures). Skipped only when Chromium or its driver is not installed (`apt-get install chromium chromium-driver`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from unittest import mock

import httpx
import pytest
import yaml

import lookup_task
from browser_helpers import chromium, needs_chromium
from proc_helpers import free_port
from agentrft.store import RunStore

pytestmark = needs_chromium

WAIT_S = 600  # generous bounds on waiting for a busy 2-core machine; nothing asserts on how long anything took
RELEASE = threading.Event()


class _GatedStore(RunStore):
    """The trainer's store, holding train step 2's record until the browser test releases it."""

    def record_step(self, run_id, step, split, metrics, trajectories):  # noqa: ANN001
        if split == "train" and step >= 2:
            RELEASE.wait(WAIT_S)
        return super().record_step(run_id, step, split, metrics, trajectories)



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import uvicorn

    from agentrft.config import load_config
    from agentrft.models.tiny import TinyModelSpec, build_tiny_model
    from agentrft.rl.sft import run_sft
    from agentrft.rl.trainer import train
    from agentrft.ui import make_server_app

    tmp = tmp_path_factory.mktemp("ui_browser")
    files = lookup_task.write_task(tmp / "data", n_train=16, n_valid=3, n_demos=32)
    model = build_tiny_model(lookup_task.corpus(files), tmp / "model",
                             TinyModelSpec(vocab_size=384, hidden_size=64, num_layers=2, intermediate_size=192))
    sft = run_sft(str(model), files["demos"], tmp / "sft", epochs=4, batch_size=8, learning_rate=1e-2)
    cfg_path = tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "ui-browser", "model": str(sft.out_dir), "training_file": str(files["train"]),
        "validation_file": str(files["valid"]), "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER,
        "output_dir": str(tmp / "runs"),
        "hyperparameters": {"max_steps": 3, "batch_size": 2, "group_size": 2, "eval_interval": 3, "eval_samples": 1,
                            "max_new_tokens": 24, "max_turns": 3, "learning_rate": 1e-3, "seed": 3,
                            "max_signal_free_steps": 0},  # a 3-step tiny run may see no reward variance at all
    }))
    cfg = load_config(cfg_path)
    store = RunStore(cfg.store_url)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_server_app(store), host="127.0.0.1", port=port, log_level="warning"))
    srv = threading.Thread(target=server.run, daemon=True)
    srv.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"

    outcome: dict = {}

    def run_training() -> None:
        try:
            outcome["run_id"] = train(cfg, progress=False)
        except BaseException as e:  # noqa: BLE001 — reported by the tests that wait for the run
            outcome["error"] = e

    RELEASE.clear()
    patch = mock.patch("agentrft.rl.trainer.RunStore", _GatedStore)
    patch.start()
    trainer = threading.Thread(target=run_training, daemon=True)
    trainer.start()

    driver = chromium(1360, 1000)
    shots = Path(os.environ.get("AGENTRFT_UI_SCREENSHOTS") or tmp / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    w = {"store": store, "base": f"http://127.0.0.1:{port}", "driver": driver, "trainer": trainer,
         "outcome": outcome, "shots": shots, "tmp": tmp}
    try:
        yield w
    finally:
        RELEASE.set()
        trainer.join(WAIT_S)
        patch.stop()
        driver.quit()
        server.should_exit = True
        srv.join(30)
        store.close()


def _run_id(w) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        runs = w["store"].list_runs()
        if runs:
            return runs[0]["id"]
        assert "error" not in w["outcome"], w["outcome"].get("error")
        time.sleep(0.1)
    raise AssertionError("the training run never created its run")


def _finished(w) -> str:
    RELEASE.set()
    w["trainer"].join(WAIT_S)
    assert not w["trainer"].is_alive(), "the training run did not finish"
    assert "error" not in w["outcome"], repr(w["outcome"].get("error"))
    return w["outcome"]["run_id"]


def _wait(driver, cond, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(cond, message=what)


def _shot(w, name: str) -> None:
    p = w["shots"] / f"{name}.png"
    w["driver"].save_screenshot(str(p))
    assert p.stat().st_size > 5000  # a rendered page, not an empty image


def _reward_points(driver) -> int:
    return int(driver.execute_script(
        "var s = document.querySelector('figure.chart svg'); return s ? +s.getAttribute('data-points') : -1;"))


def test_a_curve_gains_a_point_while_the_run_writes(world):
    from selenium.webdriver.common.by import By

    w, d = world, world["driver"]
    run_id = _run_id(w)
    deadline = time.monotonic() + WAIT_S
    while not w["store"].step_metrics(run_id, split="train") and time.monotonic() < deadline:
        assert "error" not in w["outcome"], w["outcome"].get("error")
        time.sleep(0.1)
    assert w["store"].step_metrics(run_id, split="train"), "train step 1 was never recorded"
    d.get(f"{w['base']}/ui/runs/{run_id}")
    _wait(d, lambda d: d.find_element(By.ID, "charts").get_attribute("data-loaded") == "1", "the curves never loaded")
    n0 = _reward_points(d)
    assert n0 >= 1 and d.find_element(By.ID, "run-status").text == "running"
    assert w["trainer"].is_alive()  # held at step 2: the run is still writing
    RELEASE.set()  # let train step 2 (and the rest of the run) be recorded
    _wait(d, lambda d: _reward_points(d) > n0, f"the reward curve never gained a point beyond {n0}")
    assert _reward_points(d) > n0
    _finished(w)
    _wait(d, lambda d: d.find_element(By.ID, "run-status").text == "succeeded", "the status never became succeeded")
    d.get(f"{w['base']}/ui/runs/{run_id}")
    _wait(d, lambda d: d.find_element(By.ID, "charts").get_attribute("data-loaded") == "1", "curves")
    _shot(w, "run")


def test_the_runs_page_lists_the_run(world):
    from selenium.webdriver.common.by import By

    w, d = world, world["driver"]
    run_id = _finished(w)
    d.get(f"{w['base']}/")  # the root redirects to /ui/
    row = d.find_element(By.CSS_SELECTOR, f'tr.run[data-run="{run_id}"]')
    assert "succeeded" in row.text and "ui-browser" in row.text
    assert row.find_element(By.CSS_SELECTOR, "td.num").text == "3"  # latest step
    _shot(w, "runs")


def test_the_trajectory_page_shows_a_tool_call_and_its_grade(world):
    from selenium.webdriver.common.by import By

    w, d = world, world["driver"]
    run_id = _finished(w)
    d.get(f"{w['base']}/ui/trajectories?run={run_id}&tool=lookup")
    _shot(w, "trajectories")
    links = d.find_elements(By.CSS_SELECTOR, "#trajectories tr.traj td:first-child a")
    assert links, "no trajectory of the run called lookup"
    trace = links[0].text
    links[0].click()
    _wait(d, lambda d: d.find_element(By.ID, "trace-id").text == trace, "the trajectory page did not open")
    t = w["store"].trajectory(trace)
    call = t["tool_calls"][0]
    calls = d.find_elements(By.CSS_SELECTOR, ".call")
    assert calls and calls[0].find_element(By.CSS_SELECTOR, ".tool-name").text == "lookup"
    assert json.loads(calls[0].find_element(By.CSS_SELECTOR, ".args pre").text) == json.loads(call["arguments"])
    assert calls[0].find_element(By.CSS_SELECTOR, ".out pre").text == call["output"].strip()
    grade = d.find_element(By.CSS_SELECTOR, "#grades tr.grade")
    g = t["grades"][0]
    assert g["grader_name"] == "answer" and "answer" in grade.text and g["version"][:12] in grade.text
    assert f"{g['score']:.3f}" in grade.text
    _shot(w, "trajectory")


def test_a_deep_link_by_trace_id_opens_that_trajectory(world):
    from selenium.webdriver.common.by import By

    w, d = world, world["driver"]
    run_id = _finished(w)
    trajs = w["store"].trajectories(run_id, split="valid")
    t = trajs[-1]
    d.get(f"{w['base']}/ui/t/{t['trace_id']}")
    assert d.find_element(By.ID, "trace-id").text == t["trace_id"]
    assert d.find_element(By.ID, "reward").text == f"{t['reward']:.3f}"
    assert f"step {t['step']}" in d.find_element(By.CSS_SELECTOR, "p.meta").text


def test_an_approval_entered_in_the_page_is_recorded(world):
    from selenium.webdriver.common.by import By

    w, d = world, world["driver"]
    run_id = _finished(w)
    store = w["store"]
    trace = store.trajectories(run_id, limit=1)[0]["trace_id"]
    keep = store.enqueue_approval(trace, "lookup", {"key": "K1"}, run_id=run_id)
    aid = store.enqueue_approval(trace, "delete_table", {"table": "colors"}, run_id=run_id)
    d.get(f"{w['base']}/ui/approvals")
    _shot(w, "approvals")
    row = d.find_element(By.CSS_SELECTOR, f'tr.approval[data-id="{aid}"]')
    row.find_element(By.NAME, "decided_by").send_keys("ui-tester")
    row.find_element(By.NAME, "reason").send_keys("drops data")
    row.find_element(By.CSS_SELECTOR, "button.deny").click()
    _wait(d, lambda d: d.find_elements(By.ID, "notice"), "no confirmation after deciding")
    got = store.get_approval(aid)
    assert (got["status"], got["decided_by"], got["reason"]) == ("denied", "ui-tester", "drops data")
    assert got["decided_at"] is not None
    assert store.get_approval(keep)["status"] == "pending"  # only the row acted on
    assert "ui-tester" in d.find_element(By.ID, "decided").text
    _shot(w, "approvals-decided")


def test_bad_inputs_give_a_page_that_says_so(world):
    from selenium.webdriver.common.by import By

    w, d = world, world["driver"]
    for path, status, says in [("/ui/runs/run-nope", 404, "no run 'run-nope'"),
                               ("/ui/t/no-such-trace", 404, "no trajectory with trace_id 'no-such-trace'"),
                               ("/ui/trajectories?reward_min=high", 400, "reward_min: 'high' is not a number")]:
        assert httpx.get(w["base"] + path).status_code == status
        d.get(w["base"] + path)
        err = d.find_element(By.ID, "error")
        assert says in err.text and "Traceback" not in d.page_source
    _shot(w, "error")


def test_screenshots_of_the_other_pages(world):
    """The remaining pages render in the browser (and their pictures are taken for the docs)."""
    from selenium.webdriver.common.by import By

    w, d = world, world["driver"]
    run_id = _finished(w)
    store = w["store"]
    ck = store.checkpoints(run_id)
    store.add_registry_entry(run_id, ck[-1]["id"], status="refused", grader_versions={"answer": "v"},
                             evidence={"gates": [{"gate": "reward_delta", "passed": False, "waived": False,
                                                  "detail": "Δ reward below the policy's minimum"}]})
    row = store.trajectories(run_id, split="valid")[0]["row_index"]
    for name, path, expect in [("item", f"/ui/runs/{run_id}/item/{row}", "across checkpoints"),
                               ("compare", f"/ui/runs/{run_id}/compare", "95% interval"),
                               ("registry", "/ui/registry", "reward_delta: FAIL"),
                               ("audit", f"/ui/audit?run={run_id}&n=2", "Random audit")]:
        d.get(w["base"] + path)
        assert expect in d.find_element(By.TAG_NAME, "main").text, name
        _shot(w, name)


def test_monitor_alerts_are_marked_on_the_curves(world):
    """A run whose step 3 carries a monitor alert (recorded as the trainer's monitors record them): the chart script
    draws a red mark at that step on every curve, with the alert's message, and the page lists it."""
    from selenium.webdriver.common.by import By

    from agentrft.ui.synthetic import fill_run

    w, d = world, world["driver"]
    _finished(w)
    run = fill_run(w["store"], steps=8, eval_every=4, rows_per_step=4, group=2, valid_rows=4, name="with-alert")
    d.get(f"{w['base']}/ui/runs/{run}")
    _wait(d, lambda d: d.find_element(By.ID, "charts").get_attribute("data-loaded") == "1", "the curves never loaded")
    figs = d.find_elements(By.CSS_SELECTOR, "figure.chart")
    marks = [len(f.find_elements(By.CSS_SELECTOR, "svg g.alert")) for f in figs]
    assert marks and all(m == 1 for m in marks), marks
    title = d.execute_script("return document.querySelector('svg g.alert title').textContent")
    assert title.startswith("step 3 train: entropy_collapse")
    assert "entropy_collapse" in d.find_element(By.ID, "alerts").text
    _shot(w, "run-alert")
