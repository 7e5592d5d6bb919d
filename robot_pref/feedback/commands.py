"""`robot-pref label` and `robot-pref label-report` (heavy imports happen when a command runs)."""

from __future__ import annotations

from robot_pref.feedback.config import LabelConfig, LabelReportConfig


def label(cfg: LabelConfig) -> dict:
    from robot_pref.feedback.run import label as run

    return run(cfg)


def label_report(cfg: LabelReportConfig) -> dict:
    from robot_pref.feedback.report import label_report as run

    return run(cfg)


def register(sub) -> None:
    from robot_pref.config import add_command

    add_command(sub, "label", LabelConfig, label,
                help="Ask a labeler (vlm, clip, teacher, replay) which of two frames better achieves the goal")
    add_command(sub, "label-report", LabelReportConfig, label_report,
                help="Label accuracy vs the true reward, abstention, confusion, cost/latency (JSON + PNG)")
