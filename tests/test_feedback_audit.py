"""label-audit: several labelers on the same pairs, one table against ground truth."""

import json

import numpy as np
import pytest

from robot_pref.feedback import LabelAuditConfig
from robot_pref.feedback.audit import label_audit
from robot_pref.feedback.synthetic import make_square_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("data") / "sq.zarr", episodes=8, length=30, size=64)


def test_audit_compares_teachers_and_progress_on_the_same_work(ds, tmp_path):
    specs = {"oracle": "labeler: teacher\nteacher: {kind: oracle}\n",
             "flat": "name: flat-mistake\nlabeler: teacher\nteacher: {kind: mistake, eps: 0.25}\n",
             "vlm_like": "labeler: teacher\nteacher: {kind: vlm-like}\n",
             "gvl": "labeler: progress\ngvl: {frames: 4, model: mock, concurrency: 4}\n"}
    paths = []
    for name, text in specs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        paths.append(str(tmp_path / f"{name}.yaml"))
    cfg = LabelAuditConfig(dataset=ds.path, labelers=paths, out=str(tmp_path / "audit"), camera="agentview",
                           pairs=600, mock=True, mock_progress_noise=0.0)
    report = label_audit(cfg)
    rows = report["labelers"]
    assert list(rows) == ["oracle", "flat-mistake", "vlm_like", "gvl"]
    oracle, flat, vlm_like, gvl = rows.values()
    assert oracle["accuracy"] == 1.0 and oracle["requests"] == 0 and oracle["voc"] is None
    assert abs(flat["accuracy"] - 0.75) < 4 * np.sqrt(0.75 * 0.25 / flat["labels"])
    for b in flat["by_gap"]:  # flat noise: the same accuracy at every gap
        assert abs(b["accuracy"] - 0.75) < 4 * np.sqrt(0.75 * 0.25 / b["answered"]), b
    vl = [b for b in vlm_like["by_gap"] if b["answered"] > 30]
    assert vl[0]["accuracy"] < 0.75 and vl[-1]["accuracy"] > 0.85  # errors concentrate on near-ties
    assert vl[0]["abstention"] > vl[-1]["abstention"]
    assert gvl["accuracy"] == 1.0 and gvl["voc"] > 0.95  # noiseless progress answers: the true order
    assert gvl["requests"] == 100 and gvl["images"] == 400 and gvl["labels"] == 600  # 6 pairs per request
    assert gvl["per_correct"]["requests"] == pytest.approx(100 / gvl["correct"])
    out = tmp_path / "audit"
    assert json.loads((out / "audit.json").read_text())["labelers"]["gvl"]["voc"] == gvl["voc"]
    table = (out / "audit.md").read_text()
    assert all(f"| {name} |" in table for name in rows) and (out / "audit.png").stat().st_size > 10_000
    # the pair labelers answered the same pairs
    from robot_pref.feedback import load_labels

    a, b = load_labels(out / "oracle"), load_labels(out / "vlm_like")
    np.testing.assert_array_equal(a.index_a, b.index_a)
    again = label_audit(cfg)["labelers"]  # teachers are cached; the mock's new port is a new endpoint (asked again)
    assert again["vlm_like"]["counts"]["cached"] == 600 and again["vlm_like"]["accuracy"] == vlm_like["accuracy"]
    assert again["gvl"]["counts"]["requests_asked"] == 100 and again["gvl"]["accuracy"] == 1.0


def test_audit_refuses_bad_input(ds, tmp_path):
    (tmp_path / "x.yaml").write_text("teacher: {kind: oracle}\n")
    with pytest.raises(ValueError, match="names no labeler"):
        label_audit(LabelAuditConfig(dataset=ds.path, labelers=[str(tmp_path / "x.yaml")], camera="agentview"))
    with pytest.raises(ValueError, match="--labelers"):
        label_audit(LabelAuditConfig(dataset=ds.path, camera="agentview"))


def test_mock_server_cli_answers_from_the_datasets_hidden_truth(ds, tmp_path):
    """`python -m robot_pref.feedback.mock_server --dataset X --camera K`: what `robot-pref label` is pointed at
    by hand; noiseless progress answers give the true order, and a frame not in the dataset (JPEG changes the
    pixels) is refused with a 400, failing the query without retries."""
    import subprocess
    import sys

    from robot_pref.feedback.config import LabelConfig, ProgressConfig, VLMConfig
    from robot_pref.feedback.run import label
    from robot_pref.feedback.store import load_labels

    proc = subprocess.Popen([sys.executable, "-m", "robot_pref.feedback.mock_server", "--dataset", ds.path,
                             "--camera", "agentview_64", "--progress-noise", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        out = tmp_path / "gvl"
        summary = label(LabelConfig(dataset=ds.path, camera="agentview_64", labeler="progress", pairs=24,
                                    out=str(out), progress=False,
                                    gvl=ProgressConfig(base_url=url, model="mock", frames=4, concurrency=2)))
        assert summary["counts"]["requests"] == 4 and summary["counts"]["failed"] == 0
        labels, reward = load_labels(out), ds.ground_truth("reward")
        order = (reward[labels.index_b] > reward[labels.index_a]).astype(int)
        strict = reward[labels.index_a] != reward[labels.index_b]
        assert len(labels) == 24 and (labels.label[strict] == order[strict]).all()
        summary = label(LabelConfig(dataset=ds.path, camera="agentview_64", labeler="vlm", pairs=2,
                                    out=str(tmp_path / "jpeg"), progress=False,
                                    vlm=VLMConfig(base_url=url, model="mock", image_format="jpeg",
                                                  prompt="single-stage", max_retries=6)))
        assert summary["counts"]["failed"] == 2 and summary["counts"]["labels"] == 0
    finally:
        proc.terminate()
        proc.wait()
