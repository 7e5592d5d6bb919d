"""robot_pref.feedback: pair samplers, labelers (vlm, progress, clip, teacher, replay) and the label store.

`label(cfg)` and `label_report(cfg)` are the pipeline's entry points (`label_audit(cfg)` compares
labelers); `load_labels(dir)` is what
the reward room reads. Names load on first use, so the CLI's start-up stays cheap.
"""

from robot_pref.lazy import lazy_exports

_EXPORTS = {
    "label": "robot_pref.feedback.run",
    "label_report": "robot_pref.feedback.report",
    "label_audit": "robot_pref.feedback.audit",
    **{name: "robot_pref.feedback.config" for name in
       ("ClipConfig", "LabelAuditConfig", "LabelConfig", "LabelReportConfig", "ProgressConfig", "ReplayConfig", "TeacherConfig",
        "VLMConfig")},
    **{name: "robot_pref.feedback.labelers" for name in ("LABELERS", "Labeler", "Query", "register_labeler")},
    **{name: "robot_pref.feedback.samplers" for name in ("SAMPLERS", "PairSampler", "make_sampler", "register_sampler")},
    **{name: "robot_pref.feedback.store" for name in ("Answer", "LabelSet", "LabelStore", "load_labels")},
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
