"""Hybrid routing: the rule picks the machine's weak spots within the human budget, people's answers
override the machine's in the merged export, a rerun asks nobody twice, label-report's per-source
numbers, and the whole thing through `robot-pref run` on a tiny dataset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from robot_pref.feedback.config import HybridConfig, LabelConfig, LabelReportConfig, TeacherConfig
from robot_pref.feedback.hybrid import (ABSTAIN_TIER, AbstainRule, RandomRule, UncertaintyRule, human_budget,
                                        people_labels, route)
from robot_pref.feedback.report import label_report
from robot_pref.feedback.run import label
from robot_pref.feedback.store import ABSTAINED, FAILED, LABELED, UNPARSABLE, Answer, LabelSet, load_labels
from robot_pref.feedback.synthetic import make_square_dataset


def answer(i: int, status: str, label: int = 0, **meta) -> Answer:
    return Answer(f"k{i}", i, i + 100, label, status, "", meta)


def weak_and_margins() -> list[Answer]:
    """Pairs 0..9: 3 failed/unparsable/abstained, 7 labeled with known CLIP score margins."""
    margins = {1: 0.5, 2: 0.1, 4: 0.3, 5: 0.05, 6: 0.9, 8: 0.2, 9: 0.7}
    out = []
    for i in range(10):
        if i == 3:
            out.append(answer(i, FAILED, -1))
        elif i == 7:
            out.append(answer(i, ABSTAINED, -1, score_a=0.4, score_b=0.4))
        elif i == 0:
            out.append(answer(i, UNPARSABLE, -1))
        else:
            out.append(answer(i, LABELED, 1, score_a=0.2, score_b=0.2 + margins[i]))
    return out


def test_uncertainty_rule_routes_failed_then_abstained_then_lowest_margin_within_budget():
    answers = weak_and_margins()
    ia = np.asarray([a.index_a for a in answers])
    ib = np.asarray([a.index_b for a in answers])
    prio, reason = UncertaintyRule(HybridConfig(), None, "f").priority(ia, ib, answers)
    assert route(prio, 5).tolist() == [0, 3, 7, 5, 2]  # no label (stable order), abstained, margins 0.05, 0.1
    assert route(prio, 2).tolist() == [0, 3]
    assert [reason[i] for i in (0, 3, 7, 5)] == ["unparsable", "failed", "abstained", "low-confidence"]
    assert len(route(prio, 100)) == 10  # the default spends the whole budget
    prio, reason = AbstainRule(HybridConfig(), None, "f").priority(ia, ib, answers)
    assert route(prio, 100).tolist() == [0, 3, 7]  # only what the machine could not answer
    assert prio[7] == ABSTAIN_TIER


def test_rules_without_confidence_fill_at_random_and_never_route_unasked_pairs():
    answers = [answer(i, LABELED, 1) for i in range(6)] + [None, answer(7, ABSTAINED, -1)]
    ia = ib = np.arange(8)
    prio, reason = UncertaintyRule(HybridConfig(), None, "f", seed=3).priority(ia, ib, answers)
    first = route(prio, 4)
    assert first[0] == 7 and 6 not in first and set(reason[first[1:]]) == {"random"}
    assert route(UncertaintyRule(HybridConfig(), None, "f", seed=3).priority(ia, ib, answers)[0], 4).tolist() == \
        first.tolist()  # seeded: the same pairs on a rerun
    prio, _ = RandomRule(HybridConfig(), None, "f").priority(ia, ib, answers)
    assert 6 not in route(prio, 8) and len(route(prio, 8)) == 7
    with pytest.raises(ValueError, match="--hybrid.reward-model"):
        UncertaintyRule(HybridConfig(rule="disagreement"), None, "f").disagreement(ia, ib)


def test_human_budget_is_the_smallest_limit_set():
    assert human_budget(HybridConfig(fraction=0.1), 2000) == 200
    assert human_budget(HybridConfig(fraction=0.1, budget=50), 2000) == 50
    assert human_budget(HybridConfig(fraction=0.5, minutes=10, seconds_per_label=4), 2000) == 150
    with pytest.raises(ValueError, match="needs a human budget"):
        human_budget(HybridConfig(fraction=0), 100)
    with pytest.raises(ValueError, match="share of the pairs"):
        human_budget(HybridConfig(fraction=1.5), 100)


def test_people_labels_flip_reversed_pairs_and_tie_contradictions():
    pairs = (np.asarray([1, 3, 5]), np.asarray([2, 4, 6]))
    rows = [Answer("a", 1, 2, 0, LABELED, "", {"person": "ann"}),
            Answer("b", 4, 3, 0, LABELED, "", {"person": "ann"}),  # asked as (4, 3): a=4 better = b better here
            Answer("c", 3, 4, 1, LABELED, "", {"person": "bob"}),
            Answer("d", 5, 6, 0, LABELED, "", {"person": "ann"}),
            Answer("e", 5, 6, 1, LABELED, "", {"person": "bob"}),
            Answer("f", 7, 8, 1, LABELED, "", {"person": "ann"})]  # not routed: ignored
    merged, oriented = people_labels(pairs, rows)
    assert merged[0][:2] == (0, "ann") and merged[1][:2] == (1, "ann+bob") and merged[2][:2] == (-1, "ann+bob")
    assert len(oriented) == 5 and all((r.index_a, r.index_b) != (4, 3) for r in oriented)


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    path = tmp_path_factory.mktemp("hybrid") / "square.zarr"
    return make_square_dataset(path, episodes=6, length=20, size=32)


def hybrid_cfg(ds, out, **hybrid) -> LabelConfig:
    return LabelConfig(dataset=str(ds.path), camera="agentview_32", labeler="hybrid", pairs=120, out=str(out),
                       progress=False, teacher=TeacherConfig(kind="vlm-like", abstain=0.5, abstain_halflife=0.05),
                       hybrid=HybridConfig(human="teacher", teacher=TeacherConfig(kind="oracle"), **hybrid))


def test_hybrid_merges_people_over_the_machine_and_a_rerun_asks_nobody_twice(square, tmp_path):
    cfg = hybrid_cfg(square, tmp_path / "hybrid", fraction=0.25, overlap=0.5)
    counts = label(cfg)["counts"]
    labels = load_labels(tmp_path / "hybrid")
    src, route_col, machine = labels.extra["source"], labels.extra["route"], labels.extra["machine_label"]
    assert len(labels) == 120 and counts["human_budget"] == 30 and counts["human_answered"] == 30
    assert (src == "human").sum() == 30 and (src == "teacher").sum() == 90
    # the machine alone (same keys: its cached answers): every abstention went to people, first
    alone = label(dataclasses.replace(cfg, labeler="teacher", out=str(tmp_path / "alone")))
    assert alone["counts"]["cached"] == 0  # its own directory: asked afresh, same hash-derived answers
    machine_only = load_labels(tmp_path / "alone")
    assert np.array_equal(machine_only.label, machine) and np.array_equal(machine_only.index_a, labels.index_a)
    abstained = machine_only.label == -1
    assert 0 < abstained.sum() <= 30 and (src[abstained] == "human").all()
    assert set(route_col[abstained]) == {"abstained"} and set(route_col[(src == "human") & ~abstained]) == {"random"}
    # people (oracle) override the machine; machine rows keep their label
    reward = square.ground_truth("reward")
    human = src == "human"
    truth = (reward[labels.index_b] > reward[labels.index_a]).astype(np.int8)
    decided = human & (reward[labels.index_a] != reward[labels.index_b])
    assert np.array_equal(labels.label[decided], truth[decided])
    assert np.array_equal(labels.label[~human], machine[~human])
    assert (labels.extra["person"][human] != "").all() and (labels.extra["person"][~human] == "").all()
    assert counts["human_overrides"] == int((labels.label[human] != machine[human]).sum()) > 0
    people = load_labels(tmp_path / "hybrid" / "human")
    assert len(people) == 30 + 15 and set(people.extra["person"]) == {"simulated-1", "simulated-2"}

    again = label(cfg)["counts"]
    assert again["answered"] == 0 and again["cached"] == 120
    assert again["human_asked"] == 0 and again["human_cached"] == 45
    assert np.array_equal(load_labels(tmp_path / "hybrid").label, labels.label)
    more = label(dataclasses.replace(cfg, hybrid=dataclasses.replace(cfg.hybrid, fraction=0.4)))["counts"]
    assert more["human_cached"] == 45 and more["human_asked"] == 48 + 24 - 45  # only the new pairs asked


def test_people_are_shown_the_machines_segments_and_the_run_records_them(square, tmp_path):
    from robot_pref.feedback.teacher import segment_returns

    cfg = hybrid_cfg(square, tmp_path / "seg", fraction=0.5)
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, segment=4))
    label(cfg)
    run = json.loads((tmp_path / "seg" / "label_run.json").read_text())
    assert run["settings"]["segment"] == 4 and run["settings"]["machine"] == "teacher"
    labels = load_labels(tmp_path / "seg")
    human = labels.extra["source"] == "human"
    starts = square.episode_starts[square.episode_of(np.arange(square.n_frames))]
    reward = square.ground_truth("reward").astype(np.float64)
    ra, _ = segment_returns(reward, starts[labels.index_a], labels.index_a, 4, 1.0)
    rb, _ = segment_returns(reward, starts[labels.index_b], labels.index_b, 4, 1.0)
    decided = human & (ra != rb)
    assert decided.sum() > 40 and np.array_equal(labels.label[decided], (rb > ra)[decided].astype(np.int8))


def test_hybrid_rejects_itself_as_machine_and_unknown_rules(square, tmp_path):
    with pytest.raises(ValueError, match="not hybrid itself"):
        label(hybrid_cfg(square, tmp_path / "a", machine="hybrid"))
    with pytest.raises(ValueError, match="unknown routing rule 'nope'"):
        label(hybrid_cfg(square, tmp_path / "b", rule="nope"))


def test_label_report_per_source_accuracy_and_agreement_on_a_known_construction(square, tmp_path):
    reward = square.ground_truth("reward")
    order = np.argsort(reward, kind="stable")
    lo, hi = order[:20], order[-20:]  # distinct rewards: lo[i] worse than hi[i]
    assert (reward[lo] < reward[hi]).all()
    truth = np.ones(20, dtype=np.int8)  # b = hi better
    label_ = truth.copy()
    label_[[10, 11, 12, 13]] = 0  # machine rows 10..19: 6 of 10 right
    machine = label_.copy()
    machine[[0, 1, 2]] = 0  # the machine's answer on the 10 human rows: 7 of 10 agree with people
    source = np.asarray(["human"] * 10 + ["clip"] * 10)
    LabelSet(lo, hi, label_, {"source": source, "person": np.where(source == "human", "ann", ""),
                              "machine_label": machine,
                              "route": np.where(source == "human", "random", "")}).save(tmp_path / "labels")
    both = np.asarray([1, 1, 1, 0], dtype=np.int8)  # bob disagrees with ann on 1 of 4 pairs
    LabelSet(np.r_[lo[:10], lo[:4]], np.r_[hi[:10], hi[:4]], np.r_[truth[:10], both],
             {"person": np.asarray(["ann"] * 10 + ["bob"] * 4)}).save(tmp_path / "labels" / "human")
    report = label_report(LabelReportConfig(dataset=str(square.path), labels=str(tmp_path / "labels")))
    assert report["sources"]["human"]["accuracy"] == 1.0 and report["sources"]["clip"]["accuracy"] == 0.6
    assert report["sources"]["routed"]["machine"]["accuracy"] == 0.7
    assert report["agreement"]["human_machine"] == {"pairs": 10, "agreement": 0.7}
    hh = report["agreement"]["human_human"]
    assert hh["agreement"] == 0.75 and hh["pairs"] == 4 and hh["people"] == ["ann", "bob"]
    assert report["quality"]["accuracy"] == 0.8
    assert json.loads((tmp_path / "labels" / "label_report.json").read_text())["agreement"] == report["agreement"]


def test_a_pipeline_run_is_told_a_plain_rerun_merges(tmp_path):
    from robot_pref.feedback.human_queue import merge_hint

    (tmp_path / "run" / "stages").mkdir(parents=True)  # RUN/labels next to RUN/stages: a `robot-pref run`
    hint = merge_hint(tmp_path / "run" / "labels")
    assert "rerunning `robot-pref run CONFIG` (the same config)" in hint and "rm " not in hint
    assert "robot-pref label --labeler hybrid" in merge_hint(tmp_path / "labels")


def test_hybrid_runs_through_the_pipeline(square, tmp_path, ray_session):
    from robot_pref.pipeline.run import RunConfig, run_pipeline
    from robot_pref.render.render import RenderConfig

    cfg = RunConfig(name="hybrid", run_dir=str(tmp_path / "run"), dataset=str(square.path), parallel=False,
                    stop_after="label_report", render=RenderConfig(camera="agentview", size=32),
                    label=dataclasses.replace(hybrid_cfg(square, "", fraction=0.1), camera="", out=""))
    report = run_pipeline(cfg)
    assert report["labels"]["labeler"] == "hybrid" and report["labels"]["run_counts"]["human_answered"] == 12
    assert report["labels"]["sources"]["human"]["accuracy"] == 1.0
    assert (load_labels(tmp_path / "run" / "labels").extra["source"] == "human").sum() == 12


def test_a_plain_pipeline_rerun_merges_what_people_answered(square, tmp_path, ray_session, capsys):
    from robot_pref.feedback.human_queue import QUEUE_NAME, human_answer, read_queue
    from robot_pref.feedback.store import STORE_NAME, LabelStore
    from robot_pref.pipeline.run import RunConfig, run_pipeline
    from robot_pref.render.render import RenderConfig

    cfg = hybrid_cfg(square, "", fraction=0.1)
    cfg = RunConfig(name="hybrid", run_dir=str(tmp_path / "run"), dataset=str(square.path), parallel=False,
                    stop_after="label_report", render=RenderConfig(camera="agentview", size=32),
                    label=dataclasses.replace(cfg, camera="", out="",
                                              hybrid=dataclasses.replace(cfg.hybrid, human="queue")))
    assert run_pipeline(cfg)["labels"]["run_counts"]["human_answered"] == 0
    capsys.readouterr()
    run_pipeline(cfg)  # no answers yet: a rerun skips labeling
    assert "label              skipped" in capsys.readouterr().out
    labels_dir = tmp_path / "run" / "labels"
    queue = read_queue(labels_dir / QUEUE_NAME)
    with LabelStore(labels_dir / STORE_NAME) as store:  # two answers given on the page
        store.put([human_answer(queue, square, queue.pairs[0], "ann", 1, LABELED),
                   human_answer(queue, square, queue.pairs[1], "ann", 0, LABELED)])
    report = run_pipeline(cfg)  # the same config, nothing removed by hand
    out = capsys.readouterr().out
    assert "render             skipped" in out and "label              skipped" not in out
    assert report["labels"]["run_counts"]["human_answered"] == 2
    assert (load_labels(labels_dir).extra["source"] == "human").sum() == 2
    run_pipeline(cfg)  # merged: nothing new to do
    assert "label              skipped" in capsys.readouterr().out


def test_queue_mode_merges_what_people_answered_and_drops_answers_about_overwritten_frames(tmp_path, caplog):
    from robot_pref.feedback.human_queue import QUEUE_NAME, answers_state, human_answer, human_answers, read_queue
    from robot_pref.feedback.store import SKIPPED, STORE_NAME, LabelStore

    ds = make_square_dataset(tmp_path / "square.zarr", episodes=6, length=20, size=32)
    cfg = hybrid_cfg(ds, tmp_path / "labels", fraction=0.1)
    cfg = dataclasses.replace(cfg, hybrid=dataclasses.replace(cfg.hybrid, human="queue"))
    with caplog.at_level("WARNING", logger="robot_pref.feedback.hybrid"):
        counts = label(cfg)["counts"]
    # an unanswered queue says what to do next: serve it, then rerun the same label command
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("12 of the 12 pairs routed to people have no human answer yet")
    assert f"robot-pref label-ui --dataset {ds.path} --labels {tmp_path / 'labels'}`" in warning
    assert "rerunning the same `robot-pref label --labeler hybrid` command" in warning
    queue = read_queue(tmp_path / "labels" / QUEUE_NAME)
    assert counts["human_pending"] == len(queue) == queue.budget == 12 and counts["human_answered"] == 0
    assert queue.dataset_identity == ds.identity and queue.segment == 1 and queue.camera == "agentview_32"
    p0, p1, p2 = queue.pairs[:3]
    assert answers_state(tmp_path / "labels") == ""  # the machine's answers are no people's
    with LabelStore(tmp_path / "labels" / STORE_NAME) as store:  # what the page commits, one row per person
        store.put([human_answer(queue, ds, p0, "ann", 1, LABELED), human_answer(queue, ds, p1, "ann", 0, LABELED),
                   human_answer(queue, ds, p1, "bob", 1, LABELED)])
        state = answers_state(tmp_path / "labels")
        store.put([human_answer(queue, ds, p2, "ann", -1, SKIPPED)])
    assert state != "" and answers_state(tmp_path / "labels") == state  # a skip is no label
    counts = label(cfg)["counts"]
    assert answers_state(tmp_path / "labels") == state  # merging changes nothing people said
    assert counts["human_answered"] == 2 and counts["human_pending"] == 10
    labels = load_labels(tmp_path / "labels")
    row = {(a, b): i for i, (a, b) in enumerate(zip(labels.index_a.tolist(), labels.index_b.tolist()))}
    assert labels.label[row[p0]] == 1 and labels.extra["person"][row[p0]] == "ann"
    assert labels.label[row[p1]] == -1 and labels.extra["person"][row[p1]] == "ann+bob"  # they contradict
    assert labels.extra["source"][row[p2]] == "teacher" and (labels.extra["source"] == "human").sum() == 2
    assert len(load_labels(tmp_path / "labels" / "human")) == 3
    # a new dataset written at the same path: the answers were about other frames and are not merged
    new = make_square_dataset(tmp_path / "square.zarr", episodes=6, length=20, size=32)
    assert len(human_answers(tmp_path / "labels")) == 3 and len(human_answers(tmp_path / "labels", dataset=new)) == 0
    assert label(cfg)["counts"]["human_answered"] == 0
