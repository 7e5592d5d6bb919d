"""The body of one render actor: a simulator rebuilt from dataset metadata plus its renderer.

It receives whole episodes of saved states and returns whole episodes of uint8 frames, so one Ray
round trip carries ~100 frames and the per-frame cost stays that of `mujoco.Renderer` itself.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np


class EpisodeRenderer:
    """One TaskEnv and one offscreen renderer; renders episodes from their saved MuJoCo states.

    Meant as a Ray actor (one per CPU); its process never loads torch."""

    def __init__(self, env_meta: Mapping[str, Any], camera: str, height: int, width: int,
                 options: Mapping[str, bool] | None = None):
        self.env_meta = dict(env_meta)
        self.camera, self.height, self.width = camera, int(height), int(width)
        self.options = dict(options or {})
        self.env = None

    def setup(self) -> dict:
        """Build the env (seconds) apart from the constructor, so its errors reach the driver as exceptions.

        Returns what the driver checks before sending work: the model's cameras and the state size.
        """
        os.environ.setdefault("MUJOCO_GL", "egl")
        # one actor = one CPU: software GL (llvmpipe) would otherwise start a raster thread per core in
        # every actor and K actors would fight over the same cores; GPU GL ignores this variable
        os.environ.setdefault("LP_NUM_THREADS", "1")
        from robot_pref.envs import TaskEnv, RenderOptions
        self.env = TaskEnv.from_meta(self.env_meta)
        # robosuite hides its visualisation sites (the gripper's grip-site line) only in reset(); online
        # frames were all rendered after a reset, so without one the replayed frames differ in those pixels
        self.env.reset()
        self.render_options = RenderOptions(**self.options)
        model = self.env.sim.model._model
        cameras = [model.camera(i).name for i in range(model.ncam)]
        if self.camera in cameras:  # make the GL context now rather than inside the first episode
            self.env.render(self.camera, self.height, self.width, self.render_options)
        self._cpu_start = time.process_time()
        return {"cameras": cameras, "state_dim": self.env.state_dim}

    def render_episode(self, states: np.ndarray) -> np.ndarray:
        """Frames (T, H, W, 3) uint8 of one episode: frame t shows saved state t."""
        frames = np.empty((len(states), self.height, self.width, 3), dtype=np.uint8)
        for t, state in enumerate(states):
            self.env.set_state(state)
            frames[t] = self.env.render(self.camera, self.height, self.width, self.render_options)
        return frames

    def cpu_seconds(self) -> float:
        """CPU time this actor spent since setup (all threads): tells rendering cost from waiting for a core."""
        return time.process_time() - self._cpu_start

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
