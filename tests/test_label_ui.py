"""The labeling page in a real browser: headless Chromium (Debian's package, driven by Playwright) against
`robot-pref label-ui` in its own process, serving the human queue of a real `robot-pref label --labeler
hybrid` run on a tiny square dataset; then the hybrid rerun merges what people answered.

`python tests/test_label_ui.py OUT_DIR` writes the screenshots in docs/ (label_ui.png, label_ui_segments.png).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.feedback.human_queue import QUEUE_NAME, answers_state, human_answers, human_rows, read_queue, write_queue
from robot_pref.feedback.store import SKIPPED, STORE_NAME, LabelStore, load_labels
from robot_pref.feedback.synthetic import make_square_dataset
from robot_pref.feedback.web.session import Conflict, LabelSession

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
LABEL_OF_KEY = {"ArrowLeft": 0, "ArrowRight": 1, "Space": -1, "=": -1}
QUEUED = 30  # 120 pairs, --hybrid.fraction 0.25


def robot_pref(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "robot_pref", *args], env={**os.environ, **(env or {})}, **popen)


def hybrid_label(dataset: Path, out: Path, *extra: str) -> dict:
    """A real `robot-pref label --labeler hybrid` run whose routed pairs go to the human queue."""
    proc = robot_pref("label", "--dataset", str(dataset), "--camera", "agentview_32", "--labeler", "hybrid",
                      "--pairs", "120", "--out", str(out), "--teacher.kind", "vlm-like", "--hybrid.human", "queue",
                      "--hybrid.fraction", "0.25", "--progress", "false", *extra,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    return json.loads((out / "label_run.json").read_text())


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_ui")
    make_square_dataset(root / "square.zarr", episodes=6, length=20, size=32)
    run = hybrid_label(root / "square.zarr", root / "labels")
    assert run["counts"]["human_routed"] == QUEUED and run["counts"]["human_answered"] == 0
    return root / "square.zarr", root / "labels"


@pytest.fixture
def labels(queued, tmp_path) -> Path:
    """A copy of the queued run's labels directory for this test alone."""
    return Path(shutil.copytree(queued[1], tmp_path / "labels"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`robot-pref label-ui` in a subprocess; `kill` is SIGKILL (nothing gets to clean up)."""

    def __init__(self, dataset: Path, labels: Path, env: dict | None = None):
        self.port, self.env, self.proc = free_port(), env, None
        self.args = ["label-ui", "--dataset", str(dataset), "--labels", str(labels), "--port", str(self.port)]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self.proc = robot_pref(*self.args, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"label-ui exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/health", timeout=2).close()
                return self
            except urllib.error.HTTPError:  # it answers (401: it wants its token)
                return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("label-ui did not answer /api/health in 90 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextlib.contextmanager
def serving(*args, **kwargs):
    server = Server(*args, **kwargs).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: tools/setup.sh installs Debian's chromium")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str, person: str):
    """A fresh browser profile: the page asks the name once, then shows the first pair."""
    page = browser.new_context(viewport={"width": 1200, "height": 860}).new_page()
    page.goto(url)
    page.fill("#name-input", person)
    page.click("#name-form button")
    page.wait_for_function("document.body.dataset.state === 'ready'")
    return page


def seq(page) -> int:
    return int(page.get_attribute("body", "data-seq"))


def press(page, key: str) -> None:
    """Press ``key`` and wait until the server's reply is on the page."""
    before = seq(page)
    page.keyboard.press(key)
    page.wait_for_function(f"Number(document.body.dataset.seq) > {before}")


def shown(page) -> tuple[int, int]:
    return int(page.get_attribute("#pair", "data-a")), int(page.get_attribute("#pair", "data-b"))


def answered(dataset: Path, labels: Path) -> dict[tuple[int, int], tuple[int, str]]:
    got = human_answers(labels, dataset=TrajectoryDataset.open(dataset))
    return {(a, b): (lab, p) for a, b, lab, p in zip(got.index_a.tolist(), got.index_b.tolist(), got.label.tolist(),
                                                    got.extra["person"].tolist())}


def test_label_20_pairs_with_the_keyboard_undo_and_skip_then_the_hybrid_rerun_merges_them(browser, queued, labels):
    dataset = queued[0]
    queue = read_queue(labels / QUEUE_NAME)
    expected: dict[tuple[int, int], int] = {}
    history: list[tuple[tuple[int, int], str]] = []  # what undo takes back, latest last
    skipped: set[tuple[int, int]] = set()
    with serving(dataset, labels) as server:
        page = open_page(browser, server.url, "ann")
        assert page.text_content("#goal") == queue.goal
        step = 0
        while len(expected) < 20:
            pair, step = shown(page), step + 1
            if step in (4, 13):  # skip (the second one is undone right away and answered after all)
                press(page, "s")
                skipped.add(pair)
                history.append((pair, "skip"))
                assert shown(page) != pair
                if step == 13:
                    press(page, "u")
                    assert shown(page) == pair
                    skipped.discard(history.pop()[0])
                continue
            if step == 9:  # undo the last label: gone from the store at once, and shown again
                last, _ = history.pop()
                press(page, "u")
                assert shown(page) == last and last not in answered(dataset, labels)
                del expected[last]
                continue
            if step == 16:  # a button does what its key does
                before = seq(page)
                page.click("button[data-choice=right]")
                page.wait_for_function(f"Number(document.body.dataset.seq) > {before}")
                expected[pair] = 1
            else:
                key = list(LABEL_OF_KEY)[step % 4]
                press(page, key)
                expected[pair] = LABEL_OF_KEY[key]
            history.append((pair, "label"))
            assert shown(page) != pair
        assert page.text_content("#progress-text").startswith(f"20 / {QUEUED} queued pairs answered")
    got = answered(dataset, labels)
    assert {pair: label for pair, (label, _) in got.items()} == expected
    assert {person for _, person in got.values()} == {"ann"}
    assert set(expected) <= set(queue.pairs) and not skipped & set(got) and len(skipped) == 1
    with LabelStore(labels / STORE_NAME) as store:
        rows = {(a.index_a, a.index_b): a for a in human_rows(store)}
    assert rows[skipped.pop()].status == SKIPPED
    assert all(rows[p].meta["time_spent_s"] > 0 and rows[p].meta["labeler"] == "label-ui" for p in expected)
    assert set(expected.values()) == {-1, 0, 1}

    # the hybrid rerun: people's answers replace the machine's on those pairs, the rest keep the machine's
    run = hybrid_label(dataset, labels)
    assert run["counts"]["human_answered"] == 20 and run["counts"]["human_pending"] == QUEUED - 20
    merged = load_labels(labels)
    where = {(a, b): i for i, (a, b) in enumerate(zip(merged.index_a.tolist(), merged.index_b.tolist()))}
    rows = [where[p] for p in expected]
    assert (merged.extra["source"][rows] == "human").all() and (merged.extra["person"][rows] == "ann").all()
    assert merged.label[rows].tolist() == list(expected.values())
    assert (merged.extra["source"] == "human").sum() == 20 and len(merged) == 120
    assert len(load_labels(labels / "human")) == 20


def test_a_killed_server_loses_no_answer_and_repeats_no_pair(browser, queued, labels):
    dataset = queued[0]
    order: list[tuple[int, int]] = []
    server = Server(dataset, labels).start()
    try:
        page = open_page(browser, server.url, "bob")
        for i in range(5):
            order.append(shown(page))
            press(page, "ArrowLeft" if i % 2 else "ArrowRight")
        server.kill()
        assert set(answered(dataset, labels)) == set(order)  # committed before each reply
        order.append(shown(page))  # answered while the server is down: the page keeps retrying it
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("document.body.dataset.state === 'offline'")
        server.start()
        page.wait_for_function("document.body.dataset.state === 'ready'")
        for i in range(4):
            order.append(shown(page))
            press(page, "ArrowRight")
    finally:
        server.kill()
    got = answered(dataset, labels)
    assert len(order) == len(set(order)) == len(got) == 10
    assert order == read_queue(labels / QUEUE_NAME).pairs[:10]  # one person: the queue in order, none twice
    assert [got[p][0] for p in order] == [1, 0, 1, 0, 1, 0, 1, 1, 1, 1]


def test_two_people_never_get_the_same_leased_pair_and_the_page_needs_its_token(browser, queued, labels):
    dataset = queued[0]
    with serving(dataset, labels, env={"ROBOT_PREF_LABEL_TOKEN": "s3cret"}) as server:
        for url in (server.url, f"{server.url}/api/next?person=eve", f"{server.url}/?token=wrong"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url, timeout=10)
            assert err.value.code == 401
        ann = open_page(browser, f"{server.url}/?token=s3cret", "ann")
        bob = open_page(browser, f"{server.url}/?token=s3cret", "bob")
        seen = {"ann": [shown(ann)], "bob": [shown(bob)]}
        assert seen["ann"][0] != seen["bob"][0]
        bob.reload()  # a reload keeps bob's lease: the same pair
        bob.wait_for_function("document.body.dataset.state === 'ready'")
        assert shown(bob) == seen["bob"][0]
        for i in range(4):
            for person, page in (("ann", ann), ("bob", bob)):
                press(page, "ArrowLeft" if i % 2 else "=")
                seen[person].append(shown(page))
                assert shown(ann) != shown(bob)
    pairs = seen["ann"] + seen["bob"]
    assert len(pairs) == len(set(pairs)) == 10
    got = answered(dataset, labels)
    assert {p for p, (_, who) in got.items() if who == "ann"} == set(seen["ann"][:4])
    assert {p for p, (_, who) in got.items() if who == "bob"} == set(seen["bob"][:4])


def test_leases_expire_overlap_pairs_go_to_two_people_and_conflicts_are_refused(queued, labels):
    ds = TrajectoryDataset.open(queued[0])
    queue = read_queue(labels / QUEUE_NAME)
    now = [0.0]
    with LabelStore(labels / STORE_NAME) as store:
        session = LabelSession(queue, ds, store, lease_s=60, overlap=0.04, clock=lambda: now[0])
        assert session.need[:3] == [2, 1, 1] and sum(session.need) == QUEUED + 1
        assert [session.next_for(p) for p in ("ann", "bob", "cat")] == [0, 0, 1]  # pair 0: two people
        session.answer("ann", queue.pairs[0], "left", 2.0)
        with pytest.raises(Conflict, match="answered pair .* already"):
            session.answer("ann", queue.pairs[0], "right", 1.0)
        assert session.next_for("ann") == 2 and session.next_for("dan") == 3
        now[0] = 61.0  # every lease expired
        session.answer("cat", queue.pairs[1], "right", 9.0)  # late, but nobody took pair 1: kept
        assert [session.next_for(p) for p in ("eve", "fay", "gus")] == [0, 2, 3]  # pair 0: its second person
        with pytest.raises(Conflict, match="went to someone else"):  # ann answered pair 0, eve holds it
            session.answer("bob", queue.pairs[0], "left", 1.0)
        with pytest.raises(Conflict, match="nothing to undo"):
            session.undo("ivy")
        state = answers_state(labels)
        assert session.undo("cat") == 1 and session.answered_by(1) == set()
        assert answers_state(labels) not in (state, "")  # an undo changes what people said (ann's answer stays)
        with pytest.raises(Conflict, match="not in this queue"):
            session.answer("ann", (10**6, 0), "left", 1.0)
        with pytest.raises(ValueError, match="choice must be one of"):
            session.answer("eve", queue.pairs[0], "maybe", 1.0)
    # the answers survive the session: a new one (a restarted server) knows them
    with LabelStore(labels / STORE_NAME) as store:
        again = LabelSession(queue, ds, store, lease_s=60, overlap=0.04)
        assert again.answered_by(0) == {"ann"} and again.answered_by(1) == set()
        assert again.next_for("ann") == 1 and again.next_for("cat") == 0


def test_queue_files_name_their_problem(queued, tmp_path):
    ds = TrajectoryDataset.open(queued[0])
    with pytest.raises(FileNotFoundError, match="--labeler hybrid"):
        read_queue(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not JSON"):
        read_queue(tmp_path / "bad.json")
    path = write_queue(tmp_path / "q.json", [(1, 2), (3, 4)], goal="g", camera="agentview_32",
                       dataset_identity="another", reasons=["a", "b"])
    with pytest.raises(ValueError, match="another dataset"):
        read_queue(path).check_dataset(ds)
    with pytest.raises(ValueError, match="2 pairs but 1 reasons"):
        write_queue(path, [(1, 2), (3, 4)], goal="g", camera="c", dataset_identity="x", reasons=["a"])


def test_segment_queues_show_both_clips_as_frame_strips(browser, queued, tmp_path):
    from robot_pref.feedback.labelers import clip_indices

    dataset, labels = queued[0], tmp_path / "seg"
    hybrid_label(dataset, labels, "--teacher.segment", "4")
    with serving(dataset, labels) as server:
        page = open_page(browser, server.url, "ann")
        a, b = shown(page)
        clips = clip_indices(TrajectoryDataset.open(dataset), np.asarray([a, b]), 4)
        for side, clip in zip(("left", "right"), clips.tolist()):
            strip = page.eval_on_selector_all(f"#side-{side} .strip img", "els => els.map(e => e.alt)")
            assert strip == [f"frame {i}" for i in clip]
        page.wait_for_function("document.querySelectorAll('#side-left .strip img.now').length === 1")
        press(page, "ArrowRight")
    assert answered(dataset, labels) == {(a, b): (1, "ann")}


def screenshots(out: Path) -> None:
    """docs/label_ui.png and docs/label_ui_segments.png: the page on the tiny square dataset's queue."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    dataset = make_square_dataset(out / "square.zarr", episodes=6, length=20, size=32).path
    docs = Path(__file__).resolve().parents[1] / "docs"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, extra in (("label_ui.png", ()), ("label_ui_segments.png", ("--teacher.segment", "4"))):
            hybrid_label(dataset, out / name, *extra)
            with serving(dataset, out / name) as server:
                page = open_page(browser, server.url, "ann")
                for key in ("ArrowRight", "=", "ArrowLeft"):
                    press(page, key)
                page.wait_for_timeout(600)
                page.screenshot(path=str(docs / name))
        browser.close()


if __name__ == "__main__":
    screenshots(Path(sys.argv[1]))
