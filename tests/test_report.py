"""The run report as a person sees it: report.html of a tiny run opened in headless Chromium (Debian's package,
driven by Playwright), served from a copy of the run directory moved elsewhere; and the summary's warnings.

The tiny run is built without a simulator in ~10 s: a synthetic-frame dataset (test_reward), labels with flips and
ties, the real label report, fit-reward and 30-step trainings; only the rollouts are written by hand, in the
format `robot-pref eval` writes, with real mp4 files. `python tests/test_report.py RUN_DIR [PNG]` screenshots
the report of a real run (docs/report.png comes from the quickstart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from robot_pref.pipeline.run import RunConfig, build_stages

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
OUTCOMES = {  # per evaluation episode; the first three are recorded as videos
    "iql-learned": [1, 0, 1, 1, 1, 1, 1, 1, 1, 1],  # 9/10
    "iql-true": [1, 1, 0, 1, 0, 1, 1, 0, 1, 1],  # 7/10: its CI overlaps iql-learned's
    "bc": [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],  # 1/10, and no success among the recorded ones
}
VIDEOS = 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_eval(run_dir: Path, policy: str, outcomes: list[int]) -> None:
    """eval/<policy>/eval_info.json and mp4s as `robot_pref.eval.rollout.evaluate` writes them."""
    import imageio.v2 as imageio

    from robot_pref.eval.rollout import wilson_interval
    from test_reward import synthetic_frames

    out = run_dir / "eval" / policy
    out.mkdir(parents=True)
    rng = np.random.default_rng(len(policy))
    rows, videos = [], []
    for i, success in enumerate(outcomes):
        row = {"episode": i, "seed": 1000 + i, "success": bool(success), "steps": 20 if success else 30,
               "return": 10.0 * success + rng.uniform()}
        if i < VIDEOS:
            progress = np.linspace(0, 1 if success else 0.4, row["steps"])
            frames = np.repeat(np.repeat(synthetic_frames(progress, rng), 2, axis=1), 2, axis=2)  # 96x96
            path = out / f"episode_{i:03d}_{'success' if success else 'fail'}.mp4"
            imageio.mimwrite(path, frames, fps=20, macro_block_size=1)
            row["video"] = path.name
            videos.append(str(path))
        rows.append(row)
    lo, hi = wilson_interval(sum(outcomes), len(outcomes))
    info = {"policy": str(run_dir / "policies" / policy / "last.pt"), "task": "lift", "episodes": len(outcomes),
            "success_rate": sum(outcomes) / len(outcomes), "successes": sum(outcomes), "ci": [lo, hi],
            "ci_method": "wilson 95%", "mean_return": float(np.mean([r["return"] for r in rows])),
            "videos": videos, "per_episode": rows}
    (out / "eval_info.json").write_text(json.dumps(info))


def build_tiny_run(run_dir: Path, **overrides) -> RunConfig:
    from robot_pref.eval.rollout import EvalConfig
    from robot_pref.feedback import LabelSet
    from robot_pref.feedback.config import LabelReportConfig
    from robot_pref.feedback.report import label_report
    from robot_pref.render.render import RenderConfig
    from robot_pref.reward.config import FitRewardConfig
    from robot_pref.reward.train import fit_reward
    from robot_pref.rl.train import train
    from test_reward import build_dataset, oracle_pairs

    cfg = RunConfig(name="tiny", run_dir=str(run_dir), render=RenderConfig(size=48),
                    fit_reward=FitRewardConfig(ensemble=1, epochs=3, device="cpu", min_pairs=500),
                    eval=EvalConfig(episodes=10, videos=VIDEOS), **overrides).resolved()
    ds = build_dataset(cfg.dataset, episodes_per_tier=2)
    a, b, label = oracle_pairs(ds, 200)
    label[:30] = -1  # abstentions
    label[30:50] = 1 - label[30:50].clip(0)  # 10% flipped answers
    LabelSet(a, b, label).save(cfg.label.out)
    label_report(LabelReportConfig(dataset=cfg.dataset, labels=cfg.label.out))
    fit_reward(cfg.fit_reward)
    stages = build_stages(cfg)
    for stage in stages:
        if stage.name.startswith("train_"):
            policy = stage.name.removeprefix("train_")
            tcfg = dataclasses.replace(stage.config, reward_key="true" if stage.config.algo == "iql" else "",
                                       steps=30, log_every=10, save_every=30, hidden=(16, 16), batch_size=32,
                                       device="cpu")
            train(tcfg)
            _fake_eval(run_dir, policy, OUTCOMES[policy])
    (run_dir / "stages").mkdir(exist_ok=True)
    for i, stage in enumerate(stages):
        result = {"best": {"step": 20, "success_rate": 0.9}} if stage.name.startswith("train_") else {}
        (run_dir / "stages" / f"{stage.name}.json").write_text(json.dumps(
            {"stage": stage.name, "fingerprint": "f", "seconds": 2.0 + i, "cpu_s": 0.5 * i, "result": result}))
    (run_dir / "run.json").write_text(json.dumps({"wall_s": 60.0, "machine_cpu_utilization": 0.8, "cpus": 2}))
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from robot_pref.pipeline.report import write_report

    run_dir = tmp_path_factory.mktemp("report") / "run"
    cfg = build_tiny_run(run_dir)
    report = write_report(cfg, run_dir, [s.name for s in build_stages(cfg)])
    return cfg, run_dir, report


@contextlib.contextmanager
def served(directory: Path):
    """A loopback static server of ``directory``; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium_page(width: int = 1200):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: tools/setup.sh installs Debian's chromium")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": 900})
        finally:
            browser.close()


def screenshot(run_dir: Path, png: Path) -> None:
    """Full-page screenshot of RUN_DIR/report.html once its videos have loaded."""
    with served(run_dir) as url, chromium_page() as page:
        page.goto(f"{url}/report.html")
        page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 2)",
                               timeout=30_000)
        page.screenshot(path=str(png), full_page=True)


def test_report_html_in_chromium_tables_plots_and_videos_resolve_from_a_moved_run_dir(tiny_run, tmp_path):
    from robot_pref.eval.rollout import wilson_interval

    _, run_dir, _ = tiny_run
    moved = tmp_path / "elsewhere" / "run"  # relative links: the run directory works anywhere without its dataset
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("dataset.zarr"))
    with served(moved) as url, chromium_page() as page:
        statuses = {}
        page.on("response", lambda r: statuses.__setitem__(r.url.removeprefix(url + "/"), r.status))
        page.goto(f"{url}/report.html")
        page.wait_for_function("[...document.querySelectorAll('video')].every(v => v.readyState >= 1)",
                               timeout=30_000)

        headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")
        assert headings[:2] == ["What this run says", "Rollouts"]
        assert {"Labels", "Reward model", "Learning curves", "Dataset", "Stages"} <= set(headings)
        assert page.locator("table").count() == 5 and "|---" not in page.inner_text("body")

        rows = page.eval_on_selector_all("#success tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.innerText))")
        for row, (policy, outcomes) in zip(rows, OUTCOMES.items()):
            lo, hi = wilson_interval(sum(outcomes), len(outcomes))
            assert row[:4] == [policy, f"{10 * sum(outcomes):.1f}%", f"{100 * lo:.0f}% – {100 * hi:.0f}%",
                               f"{sum(outcomes)}/10"]
            assert row[5] == "last"
        warnings = page.inner_text("#warnings")
        assert "iql-learned / iql-true" in warnings and "iql-learned / bc" not in warnings  # 90% vs 70%; vs 10%
        assert "usable labelled pairs (fewer than min_pairs=500)" in warnings  # fit-reward's warning, shown here

        stages = page.eval_on_selector_all("#stages tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.innerText))")
        assert stages[0] == ["collect", "2.0", "0.0", "0%"] and stages[2] == ["label", "4.0", "1.0", "25%"]
        assert stages[-1] == ["eval_bc", "13.0", "5.5", "42%"]

        images = page.eval_on_selector_all("img", "is => is.map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert sorted(src for src, _ in images) == ["labels/label_report.png", "learning_curves.png",
                                                    "reward/eval.png"]
        assert all(width > 100 for _, width in images)
        videos = page.eval_on_selector_all("video", "vs => vs.map(v => [v.getAttribute('src'), v.readyState, "
                                                    "v.videoWidth, v.closest('.policy').dataset.policy,"
                                                    "v.parentElement.querySelector('.tag').innerText])")
        by_policy = {}
        for src, ready, width, policy, tag in videos:
            assert ready >= 1 and width == 96 and src.startswith(f"eval/{policy}/episode_")
            by_policy.setdefault(policy, []).append(tag)
        assert by_policy == {"iql-learned": ["success", "failure"], "iql-true": ["success", "failure"],
                             "bc": ["failure", "failure"]}  # bc: no recorded success, so two failures
        for src in [s for s, *_ in images + videos]:
            assert statuses.get(src) == 200, (src, statuses)

        png = tmp_path / "report.png"
        page.screenshot(path=str(png), full_page=True)
    from PIL import Image

    with Image.open(png) as shot:
        assert shot.width == 1200 and shot.height > 2000
        assert len(set(shot.convert("L").resize((60, 120)).getdata())) > 20  # not a blank page


def test_report_md_keeps_the_numbers_for_terminals(tiny_run):
    cfg, run_dir, report = tiny_run
    md = (run_dir / "report.md").read_text()
    assert "| iql-learned | 90.0% | 59.6% – 98.2% | 9/10 |" in md
    assert "![learned vs true reward along episodes](reward/eval.png)" in md
    assert f"Spearman **{report['reward']['spearman']:.2f}** over all frames" in md
    assert "[episode 0 (success)](eval/iql-learned/episode_000_success.mp4)" in md
    assert "| label | 4.0 | 1.0 | 25% |" in md
    assert report["checkpoint"] == {"name": "last", "oracle_selection": False}
    assert report["policies"]["bc"]["examples"] == ["eval/bc/episode_000_fail.mp4", "eval/bc/episode_001_fail.mp4"]


def test_best_checkpoint_is_opt_in_and_flagged_as_oracle_selection_beside_the_numbers(tiny_run, tmp_path):
    from robot_pref.pipeline.report import write_report

    assert RunConfig().checkpoint == "last"
    cfg, run_dir, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    best = dataclasses.replace(cfg, checkpoint="best")
    report = write_report(best, copy, [s.name for s in build_stages(best)])
    assert report["checkpoint"] == {"name": "best", "oracle_selection": True}
    assert any("oracle model selection" in w for w in report["warnings"])
    (row,) = [line for line in (copy / "report.md").read_text().splitlines() if line.startswith("| iql-learned |")]
    assert row.startswith("| iql-learned | 90.0% |") and row.endswith("| best (step 20): oracle-selected |")
    html = (copy / "report.html").read_text()
    assert html.count('class="oracle">best (step 20): oracle-selected<') == 3


def test_summary_warns_where_numbers_cannot_be_trusted(tiny_run):
    from robot_pref.pipeline.report import trust_warnings

    cfg, _, report = tiny_run
    (few,) = report["reward"]["warnings"]  # fit-reward's, carried into the report
    usable = report["reward"]["counts"]["train_pairs"] + report["reward"]["counts"]["val_pairs"]
    assert f"only {usable} usable labelled pairs (fewer than min_pairs=500)" in few and few in report["warnings"]
    success = [{"policy": "a", "ci": [0.1, 0.5]}, {"policy": "b", "ci": [0.45, 0.8]}, {"policy": "c", "ci": [0.85, 1]}]
    notes = trust_warnings(cfg, {"quality": {"accuracy": 0.3, "accuracy_pairs": 90}},
                     {"val_accuracy": 0.4, "spearman": -0.2, "spearman_within_episode": 0.1,
                      "warnings": ["only 12 usable labelled pairs"]}, success)
    assert notes[0] == "only 12 usable labelled pairs"  # fit-reward's own, first
    assert "disagree with the true reward on 70.0% of the 90 answered pairs" in notes[1]
    assert "accuracy 40.0% < 50%" in notes[2] and "anti-correlated with the annotation" in notes[2]
    assert "all frames (Spearman -0.20)" in notes[3]
    assert "95% CIs overlap (a / b)" in notes[4] and len(notes) == 5  # b / c and a / c are apart
    good = trust_warnings(cfg, {"quality": {"accuracy": 0.9}}, {"val_accuracy": 0.8, "spearman": 0.7}, success[::2])
    assert good == []


if __name__ == "__main__":  # screenshot a real run's report: python tests/test_report.py runs/quickstart docs/report.png
    screenshot(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else REPO / "docs" / "report.png"))
