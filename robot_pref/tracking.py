"""Training logs where users look: TensorBoard (as robomimic) or Weights & Biases (as LeRobot), or none.

`open_tracker(kind, out, name, config)` returns a `Tracker`; the "none" one does nothing, so trainers call
it unconditionally. TensorBoard writes ``OUT/tensorboard`` (``tensorboard --logdir runs/`` shows every run
below); wandb logs to the project ``$WANDB_PROJECT`` (default robot_pref) in the mode ``WANDB_MODE`` says
(``offline`` writes ``OUT/wandb`` only; upload later with ``wandb sync``).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Literal

LogKind = Literal["none", "tensorboard", "wandb"]
KINDS = ("none", "tensorboard", "wandb")
VIDEO_FRAMES = 64  # at most this many frames of a rollout video go to TensorBoard (an animated GIF)


class Tracker:
    """The "none" logger, and the interface of the others."""

    records_videos = False  # whether rollout videos are worth rendering for this logger

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log ``{tag: number}`` at ``step``; tags group by their prefix (``loss/``, ``value/``, ``lr/``)."""

    def video(self, tag: str, path: str | Path, step: int) -> None:
        """Log an mp4 file (a rollout) at ``step``."""

    def image(self, tag: str, path: str | Path, step: int) -> None:
        """Log a PNG file (a plot) at ``step``."""

    def close(self) -> None:
        """Flush and finish the run."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TensorBoardTracker(Tracker):
    records_videos = True

    def __init__(self, out: Path, config: dict[str, Any], start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events it logs again (those past its checkpoint)
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step or None)
        if not start_step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def video(self, tag: str, path: str | Path, step: int) -> None:
        """As an animated GIF image, what TensorBoard shows (torch's add_video needs moviepy 1.x for the same)."""
        import imageio.v3 as iio
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        frames = iio.imread(path, plugin="FFMPEG")
        fps = float(iio.immeta(path, plugin="FFMPEG").get("fps") or 20.0)
        stride = max(1, -(-len(frames) // VIDEO_FRAMES))
        frames = frames[::stride]
        buf = io.BytesIO()
        first, *rest = [Image.fromarray(f) for f in frames]
        first.save(buf, format="GIF", save_all=True, append_images=rest, duration=int(1000 * stride / fps), loop=0)
        h, w = frames.shape[1:3]
        image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=buf.getvalue())
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def image(self, tag: str, path: str | Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    records_videos = True

    def __init__(self, out: Path, name: str, config: dict[str, Any]):
        import wandb

        id_file = out / "wandb_run_id"  # a resumed training continues the same wandb run
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "robot_pref"), name=name, id=run_id,
                              resume="allow", dir=str(out), config=config,
                              settings=wandb.Settings(console="off", silent=True))

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def video(self, tag: str, path: str | Path, step: int) -> None:
        self.run.log({tag: self.wandb.Video(str(path), format="mp4")}, step=step)

    def image(self, tag: str, path: str | Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str, out: str | Path, name: str, config: dict[str, Any], start_step: int = 0) -> Tracker:
    """The logger ``kind`` (none, tensorboard, wandb) for a run writing to ``out``; ``start_step`` > 0 resumes."""
    if kind not in KINDS:
        raise ValueError(f"unknown logger {kind!r}; choose --log from {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "tensorboard":
            return TensorBoardTracker(out, config, start_step)
        if kind == "wandb":
            return WandbTracker(out, name, config)
    except ImportError as err:
        raise ImportError(f"--log {kind} needs the {err.name} package: pip install 'robot_pref[tracking]' "
                          "(or the package alone), or use --log none") from err
    return Tracker()
