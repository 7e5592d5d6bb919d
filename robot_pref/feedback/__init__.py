"""robot_pref.feedback: pair samplers, labelers (vlm, clip, teacher, replay) and the label store.

`label(cfg)` and `label_report(cfg)` are the pipeline's entry points; `load_labels(dir)` is what
the reward room reads.
"""

from robot_pref.feedback.commands import label, label_report
from robot_pref.feedback.config import (ClipConfig, LabelConfig, LabelReportConfig, ReplayConfig, TeacherConfig,
                                        VLMConfig)
from robot_pref.feedback.labelers import LABELERS, Labeler, Query, register_labeler
from robot_pref.feedback.samplers import SAMPLERS, PairSampler, make_sampler, register_sampler
from robot_pref.feedback.store import Answer, LabelSet, LabelStore, load_labels

__all__ = [
    "label", "label_report", "load_labels", "LabelSet", "LabelStore", "Answer", "make_sampler", "register_sampler",
    "PairSampler", "SAMPLERS", "LABELERS", "Labeler", "Query", "register_labeler", "LabelConfig", "LabelReportConfig",
    "VLMConfig", "ClipConfig", "TeacherConfig", "ReplayConfig",
]
