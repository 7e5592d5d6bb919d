"""``--labeler hybrid``: a machine labeler answers every pair; a routing rule sends its weak spots to people.

After "Hybrid Preferences: Learning to Route Instances for Human vs. AI Feedback" (Miranda et al. 2024):

1. the machine labeler (``--hybrid.machine``: vlm, clip, progress, teacher ...) answers the run's pairs
   through the ordinary pair loop, under its own cache keys in the run's store;
2. a routing rule (`RULES`, chosen by ``--hybrid.rule``) gives every pair a priority; the highest ones,
   within the human budget (`human_budget`), go to people;
3. people answer them: either the real queue (`write_queue` for ``robot-pref label-ui``; whatever people
   answered so far is read back with `human_answers`, and a rerun merges more) or a simulated person
   (``--hybrid.human teacher``: a better teacher, `SimulatedHuman`) through the same store, keyed apart from
   the machine and per person, so a rerun asks nobody anything twice;
4. the merged export keeps the machine label unless a person answered. Its extra columns: ``source``
   (the machine kind, or "human"), ``person`` ('' for machine rows; "ann+bob" when several people answered),
   ``machine_label`` (the machine's answer on every pair, -2 = none) and ``route`` (why the pair went to
   people, '' = kept). Every human answer, one row per person, is also written to ``<out>/human/``, where
   `label-report` reads human-human agreement.

Several people on one pair: their agreeing answer, or -1 (tie) when they contradict each other.

The default rule, ``uncertainty``: pairs the machine failed on (failed, unparsable) first, then its
abstentions, then the lowest machine confidence where the labeler reports one (CLIP: score margin;
progress: predicted-progress gap), else the highest reward-ensemble disagreement when
``--hybrid.reward-model`` is given, else a seeded random order; the budget is always spent. The
teacher's segment returns are ground truth and are never read as a confidence.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np

from robot_pref.feedback.config import HybridConfig, LabelConfig, TeacherConfig
from robot_pref.feedback.human_queue import HUMAN, QUEUE_NAME, human_answers, merge_hint, write_queue
from robot_pref.feedback.labelers import Labeler, labeler_class
from robot_pref.feedback.samplers import make_sampler, resolve
from robot_pref.feedback.store import (ABSTAINED, FAILED, LABEL_STATUSES, LABELED, UNPARSABLE, Answer, LabelSet,
                                       answers_to_label_set)
from robot_pref.feedback.teacher import TeacherLabeler

log = logging.getLogger(__name__)

HUMAN_DIR = "human"  # every human answer, one row per person (LabelSet.save layout)
NO_LABEL = -2  # machine_label of a pair the machine gave no label
# priority tiers: no machine label > abstained > ranked (tier + a score in [0, 1)); -inf = never routed
FAILED_TIER, ABSTAIN_TIER, RANKED_TIER = 3.0, 2.0, 1.0


def rank01(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` scaled to [0, 1) (0 = smallest)."""
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / max(len(x), 1)


def machine_margin(answers: list[Answer | None]) -> np.ndarray | None:
    """|score gap| the machine reported per pair (CLIP scores, progress predictions; NaN where none),
    or None when it reports no confidence (vlm, teacher)."""
    for key_a, key_b in (("score_a", "score_b"), ("progress_a", "progress_b")):
        if any(a is not None and a.meta.get(key_a) is not None for a in answers):
            return np.asarray([abs(a.meta[key_b] - a.meta[key_a]) if a is not None and a.meta.get(key_a) is not None
                               else np.nan for a in answers], dtype=np.float64)
    return None


def weak_tiers(answers: list[Answer | None]) -> tuple[np.ndarray, np.ndarray]:
    """Priority and reason of the pairs the machine gave no label (failed, unparsable) or abstained on;
    -inf for labeled pairs and pairs not asked this run."""
    prio = np.full(len(answers), -np.inf)
    reason = np.full(len(answers), "", dtype="U16")
    for i, a in enumerate(answers):
        if a is not None and a.status in (FAILED, UNPARSABLE):
            prio[i], reason[i] = FAILED_TIER, a.status
        elif a is not None and a.status == ABSTAINED:
            prio[i], reason[i] = ABSTAIN_TIER, "abstained"
    return prio, reason


class RoutingRule:
    """Base: `priority` says, per pair, how much a person's answer is needed (higher first; -inf never)."""

    type: ClassVar[str] = ""

    def __init__(self, cfg: HybridConfig, dataset, frame_key: str, seed: int = 0):
        self.cfg, self.ds, self.frame_key, self.seed = cfg, dataset, frame_key, seed

    def priority(self, index_a: np.ndarray, index_b: np.ndarray,
                 answers: list[Answer | None]) -> tuple[np.ndarray, np.ndarray]:
        """(priority, reason) per pair."""
        raise NotImplementedError

    def disagreement(self, index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
        """Spread of the reward ensemble's P(b > a) (the disagreement sampler's score, via its registry)."""
        if not self.cfg.reward_model:
            raise ValueError(f"the {self.type} rule ranks by reward-ensemble disagreement: pass "
                             "--hybrid.reward-model RUN_DIR (the --out of `robot-pref fit-reward`)")
        sampler = make_sampler("disagreement", self.ds, self.frame_key, self.seed, reward_model=self.cfg.reward_model)
        return sampler.disagreement(index_a, index_b)

    def random(self, n: int) -> np.ndarray:
        return np.random.default_rng(self.seed).random(n)

    def ranked(self, prio: np.ndarray, reason: np.ndarray, answers, score: np.ndarray, name: str):
        """Put the labeled pairs in the ranked tier by ``score`` in [0, 1) (higher = weaker)."""
        labeled = np.asarray([a is not None and a.status == LABELED for a in answers], dtype=bool)
        prio[labeled] = RANKED_TIER + score[labeled]
        reason[labeled] = name
        return prio, reason


class UncertaintyRule(RoutingRule):
    """The default: failed > abstained > lowest machine confidence / highest ensemble disagreement / random."""

    type = "uncertainty"

    def priority(self, index_a, index_b, answers):
        prio, reason = weak_tiers(answers)
        margin = machine_margin(answers)
        if margin is not None:
            return self.ranked(prio, reason, answers, rank01(-np.nan_to_num(margin, nan=-np.inf)), "low-confidence")
        if self.cfg.reward_model:
            return self.ranked(prio, reason, answers, rank01(self.disagreement(index_a, index_b)), "disagreement")
        return self.ranked(prio, reason, answers, self.random(len(answers)), "random")


class AbstainRule(RoutingRule):
    """Only what the machine could not answer (failed, unparsable, abstained); the budget may stay unspent."""

    type = "abstain"

    def priority(self, index_a, index_b, answers):
        return weak_tiers(answers)


class DisagreementRule(RoutingRule):
    """failed > abstained > highest reward-ensemble disagreement (needs --hybrid.reward-model)."""

    type = "disagreement"

    def priority(self, index_a, index_b, answers):
        prio, reason = weak_tiers(answers)
        return self.ranked(prio, reason, answers, rank01(self.disagreement(index_a, index_b)), "disagreement")


class RandomRule(RoutingRule):
    """Pairs at random, whatever the machine said (the baseline a rule must beat)."""

    type = "random"

    def priority(self, index_a, index_b, answers):
        asked = np.asarray([a is not None for a in answers], dtype=bool)
        prio = np.where(asked, RANKED_TIER + self.random(len(answers)), -np.inf)
        return prio, np.where(asked, "random", "").astype("U16")


RULES: dict[str, type | str] = {r.type: r for r in (UncertaintyRule, AbstainRule, DisagreementRule, RandomRule)}


def register_rule(name: str, cls: type | str) -> None:
    """Register a routing rule class, or a lazy ``"module:Class"`` path, under a type name."""
    RULES[name] = cls


def human_budget(cfg: HybridConfig, pairs: int) -> int:
    """Most pairs sent to people: the smallest of the count, share and minutes limits that are set."""
    if not 0 <= cfg.fraction <= 1:
        raise ValueError(f"--hybrid.fraction is a share of the pairs in [0, 1], got {cfg.fraction}")
    if cfg.minutes > 0 and cfg.seconds_per_label <= 0:
        raise ValueError(f"--hybrid.minutes needs --hybrid.seconds-per-label > 0, got {cfg.seconds_per_label}")
    limits = [cfg.budget] if cfg.budget > 0 else []
    limits += [int(round(cfg.fraction * pairs))] if cfg.fraction > 0 else []
    limits += [int(cfg.minutes * 60 // cfg.seconds_per_label)] if cfg.minutes > 0 else []
    if not limits:
        raise ValueError("the hybrid labeler needs a human budget: --hybrid.budget N, --hybrid.fraction F "
                         "or --hybrid.minutes M")
    return min(limits)


def route(priority: np.ndarray, budget: int) -> np.ndarray:
    """Positions of the ``budget`` highest-priority pairs (never -inf ones), highest first."""
    order = np.argsort(-priority, kind="stable")
    return order[np.isfinite(priority[order])][:budget]


class SimulatedHuman(TeacherLabeler):
    """A better teacher standing in for a person: keyed per person and apart from any machine teacher
    (so its random draws are its own), answering exactly the routed pairs."""

    type = "simulated-human"

    def __init__(self, cfg: TeacherConfig, goal: str, dataset, person: str, pairs: tuple[np.ndarray, np.ndarray]):
        super().__init__(cfg, goal, dataset)
        self.person, self.pairs = person, pairs

    def settings(self) -> dict:
        return {**super().settings(), "person": self.person}

    def fixed_pairs(self):
        return self.pairs

    async def label(self, queries):
        answers = await super().label(queries)
        for a in answers:
            a.meta.update(source=HUMAN, person=self.person)
        return answers


def ask_simulated(cfg: LabelConfig, ds, frame_key: str, store, goal: str, pairs, segment: int, bar,
                  counts: collections.Counter) -> list[Answer]:
    """Simulated people answer the routed pairs through the store, judging ``segment``-frame clips like the
    machine (a second person answers the first ``--hybrid.overlap`` share too); returns their answers,
    one per person and pair."""
    from robot_pref.feedback.run import label_pairs

    h = cfg.hybrid
    teacher = dataclasses.replace(h.teacher, segment=segment)
    people = [("simulated-1", teacher, pairs)]
    if h.overlap > 0:
        k = int(round(h.overlap * len(pairs[0])))
        people.append(("simulated-2", dataclasses.replace(teacher, seed=teacher.seed + 1),
                       (pairs[0][:k], pairs[1][:k])))
    rows: list[Answer] = []
    for person, teacher, asked in people:
        human = SimulatedHuman(teacher, goal, ds, person, asked)
        own, results = collections.Counter(), []
        label_pairs(dataclasses.replace(cfg, pairs=0, budget=0), ds, frame_key, human, teacher, goal, {}, store,
                    own, results, bar)
        counts["human_asked"] += own["answered"]
        counts["human_cached"] += own["cached"]
        rows += [a for a in results if a is not None and a.status in LABEL_STATUSES]
    return rows


def ask_queue(cfg: LabelConfig, ds, frame_key: str, out: Path, goal: str, pairs, reasons, shown: Labeler,
              budget: int) -> list[Answer]:
    """Write the routed pairs as the label-ui queue and read back what people answered so far."""
    path = Path(cfg.hybrid.queue) if cfg.hybrid.queue else out / QUEUE_NAME
    write_queue(path, list(zip(pairs[0].tolist(), pairs[1].tolist())), goal=goal, camera=frame_key,
                dataset_identity=ds.identity, segment=shown.segment, segment_stride=shown.segment_stride,
                reasons=[str(r) for r in reasons], budget=budget)
    log.info("human queue: %d pairs -> %s", len(pairs[0]), path)
    answered = human_answers(out, dataset=ds)
    return [Answer(str(k), int(a), int(b), int(lab), ABSTAINED if lab == -1 else LABELED, "",
                   {"source": HUMAN, "person": str(p)})
            for k, a, b, lab, p in zip(answered.extra["key"], answered.index_a, answered.index_b, answered.label,
                                       answered.extra["person"])]


def pending_message(cfg: LabelConfig, out: Path, routed: int, pending: int) -> str:
    """What to do about queued pairs nobody answered yet: serve them, then merge."""
    queue = f" --queue {cfg.hybrid.queue}" if cfg.hybrid.queue else ""
    return (f"{pending} of the {routed} pairs routed to people have no human answer yet and keep the machine's "
            f"label. Next: `robot-pref label-ui --dataset {cfg.dataset} --labels {out}{queue}` "
            f"(http://127.0.0.1:8000/), people answer; then {merge_hint(out)}")


def people_labels(pairs, rows: list[Answer]) -> tuple[dict[int, tuple[int, str, str]], list[Answer]]:
    """Per routed position: (merged label, persons, key) of the people who answered that pair (either
    side order), and those answers oriented like the routed pair (the human table's rows)."""
    where = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(*pairs))}
    by_pos: dict[int, dict[str, Answer]] = collections.defaultdict(dict)
    for r in rows:
        if (r.index_a, r.index_b) in where:
            by_pos[where[r.index_a, r.index_b]][r.meta.get("person", "?")] = r
        elif (r.index_b, r.index_a) in where:  # asked the other way round: flip the answer
            flipped = -1 if r.label == -1 else 1 - r.label
            by_pos[where[r.index_b, r.index_a]][r.meta.get("person", "?")] = dataclasses.replace(
                r, index_a=r.index_b, index_b=r.index_a, label=flipped)
    merged, oriented = {}, []
    for pos, answers in by_pos.items():
        decided = {a.label for a in answers.values() if a.label != -1}
        label = decided.pop() if len(decided) == 1 else -1  # contradicting people: a tie
        persons = "+".join(sorted(answers))
        merged[pos] = (label, persons, next(iter(answers.values())).key)
        oriented += answers.values()
    return merged, oriented


def human_table(rows: list[Answer]) -> LabelSet:
    return LabelSet([r.index_a for r in rows], [r.index_b for r in rows], [r.label for r in rows],
                    {"person": np.asarray([r.meta.get("person", "?") for r in rows], dtype="U64"),
                     "key": np.asarray([r.key for r in rows], dtype="U64")})


class HybridLabeler(Labeler):
    type = "hybrid"
    uses_frames = False

    def __init__(self, cfg: HybridConfig, goal: str, dataset=None):
        super().__init__(cfg, goal, dataset)
        if cfg.machine == self.type:
            raise ValueError("--hybrid.machine names the machine labeler answering first (vlm, clip, progress, "
                             "teacher ...), not hybrid itself")
        labeler_class(cfg.machine)  # unknown kinds and rules fail before anything is asked
        resolve(RULES, cfg.rule, "routing rule")

    def bind(self, run_cfg: LabelConfig) -> None:
        cls = labeler_class(self.cfg.machine)
        self.section = getattr(run_cfg, cls.section or self.cfg.machine, None)
        self.kwargs = cls.actor_kwargs(self.section, max(1, run_cfg.workers))
        self.machine = cls(self.section, self.goal, dataset=self.dataset, **self.kwargs)
        shown = self.machine.settings()  # people are shown what the machine was: frames or clips
        self.segment, self.segment_stride = int(shown.get("segment", 1)), int(shown.get("segment_stride", 1))
        if self.cfg.human == "teacher" and self.segment_stride > 1:
            raise ValueError(f"the simulated person (a teacher) judges contiguous segments, the machine was shown "
                             f"clips every {self.segment_stride} steps; use segment_stride 1 or --hybrid.human queue")

    def settings(self) -> dict:
        """The machine's settings at the top level (fit-reward reads segment / segment_stride there)."""
        return {**self.machine.settings(), "machine": self.machine.type, "hybrid": dataclasses.asdict(self.cfg)}

    def run(self, cfg: LabelConfig, ds, frame_key: str, store, counts, results: list, bar) -> None:
        """Machine pass, routing, human pass; rewrites ``results`` into the merged answers."""
        from robot_pref.feedback.run import label_pairs

        h, machine, section, kwargs = self.cfg, self.machine, self.section, self.kwargs
        bar.set_description(f"label[hybrid: {h.machine}]")
        if machine.run is not None:
            machine.run(cfg, ds, frame_key, store, counts, results, bar)
        else:
            label_pairs(cfg, ds, frame_key, machine, section, self.goal, kwargs, store, counts, results, bar)

        answers = list(results)
        asked = [i for i, a in enumerate(answers) if a is not None]
        index_a = np.asarray([answers[i].index_a for i in asked], dtype=np.int64)
        index_b = np.asarray([answers[i].index_b for i in asked], dtype=np.int64)
        rule = resolve(RULES, h.rule, "routing rule")(h, ds, frame_key, cfg.seed)
        priority, reasons = rule.priority(index_a, index_b, [answers[i] for i in asked])
        budget = human_budget(h, len(answers))
        chosen = route(priority, budget)
        pairs = (index_a[chosen], index_b[chosen])
        counts.update(human_budget=budget, human_routed=len(chosen))
        counts.update(collections.Counter(f"routed_{r}" for r in reasons[chosen]))

        bar.set_description(f"label[hybrid: {h.human}]")
        if h.human == "teacher":
            rows = ask_simulated(cfg, ds, frame_key, store, self.goal, pairs, self.segment, bar, counts)
        else:
            bar.close()  # the queue asks nobody now: its lines on lines of their own, not after the bar
            rows = ask_queue(cfg, ds, frame_key, Path(store.path).parent, self.goal, pairs, reasons[chosen], self,
                             budget)
        merged, oriented = people_labels(pairs, rows)
        human_table(oriented).save(Path(store.path).parent / HUMAN_DIR)

        route_of = {asked[int(c)]: str(reasons[c]) for c in chosen}
        human_of = {asked[int(chosen[p])]: v for p, v in merged.items()}
        for i, a in enumerate(answers):
            if a is None:
                continue
            machine_label = a.label if a.status in LABEL_STATUSES else NO_LABEL
            meta = {"machine_label": machine_label, "route": route_of.get(i, "")}
            if i in human_of:
                label, persons, key = human_of[i]
                results[i] = Answer(key, a.index_a, a.index_b, label, ABSTAINED if label == -1 else LABELED, "",
                                    {**meta, "source": HUMAN, "person": persons})
                counts["human_overrides"] += label != machine_label
            else:
                results[i] = dataclasses.replace(a, meta={**a.meta, **meta, "source": h.machine, "person": ""})
        counts.update(human_answered=len(human_of), human_pending=len(chosen) - len(human_of))
        if h.human == "queue" and counts["human_pending"]:
            log.warning(pending_message(cfg, Path(store.path).parent, len(chosen), counts["human_pending"]))

    def label_set(self, answers: list[Answer]) -> LabelSet:
        table = answers_to_label_set(answers)

        def column(name, default, dtype):
            return np.asarray([a.meta.get(name, default) for a in answers], dtype=dtype)

        return LabelSet(table.index_a, table.index_b, table.label, {
            **table.extra, "source": column("source", self.cfg.machine, "U16"), "person": column("person", "", "U64"),
            "machine_label": column("machine_label", NO_LABEL, np.int8), "route": column("route", "", "U16")})
