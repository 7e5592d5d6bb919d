"""`robot-pref label` and `robot-pref label-report` (heavy imports happen when a command runs)."""

from __future__ import annotations

from robot_pref.feedback.config import LabelAuditConfig, LabelConfig, LabelReportConfig, LabelUIConfig


def register(sub) -> None:
    from robot_pref.config import add_command

    add_command(sub, "label", LabelConfig, "robot_pref.feedback.run:label",
                help="Ask a labeler (vlm, progress, clip, teacher, replay; hybrid: a machine first, people on its "
                     "weak spots) which of two frames better achieves the goal")
    add_command(sub, "label-report", LabelReportConfig, "robot_pref.feedback.report:label_report",
                help="Label accuracy vs the true reward, abstention, confusion, cost/latency; hybrid labels: "
                     "per-source accuracy, human-human and human-machine agreement (JSON + PNG)")
    add_command(sub, "label-audit", LabelAuditConfig, "robot_pref.feedback.audit:label_audit",
                help="Run several labelers on the same pairs and compare them against ground truth (JSON + MD + PNG)")
    add_command(sub, "label-ui", LabelUIConfig, "robot_pref.feedback.web.app:label_ui",
                help="Serve the labeling page: people answer a hybrid run's human queue in a browser (keyboard "
                     "first; every answer committed to the labels store as it is given)")
