"""`robot-pref render`."""

from __future__ import annotations


def register(sub) -> None:
    from robot_pref.config import add_command
    from robot_pref.render.render import RenderConfig, render_dataset

    add_command(sub, "render", RenderConfig, render_dataset,
                help="Render camera frames of a dataset from its saved states with Ray actors (resumable)")
