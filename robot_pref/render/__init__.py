"""Rendering camera frames from saved simulator states with Ray actors (`robot-pref render`)."""

from robot_pref.render.actors import EpisodeRenderer
from robot_pref.render.render import RenderConfig, render_dataset

__all__ = ["EpisodeRenderer", "RenderConfig", "render_dataset"]
