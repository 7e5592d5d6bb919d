"""Typed configs of `robot-pref label` / `label-report` (light: no heavy imports).

Each labeler reads its own nested section (``--vlm.model``, ``--clip.margin`` ...). Everything
here is safe to write to disk: the VLM API key is never a field, only the *name* of the
environment variable that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint and how frames are sent to it (vlm and progress labelers)."""

    model: str = field(default="gpt-4o-mini", metadata={"help": "model name the endpoint serves"})
    base_url: str = field(default="https://api.openai.com/v1",
                          metadata={"help": "OpenAI-compatible endpoint (vLLM, SGLang, Ollama, Gemini ...)"})
    api_key_env: str = field(default="OPENAI_API_KEY",
                             metadata={"help": "name of the environment variable holding the API key"})
    temperature: float = 0.0
    max_tokens: int = 512
    image_format: Literal["png", "jpeg"] = "png"
    image_size: int = field(default=0, metadata={"help": "resize frames to this many pixels (0 = as stored)"})
    jpeg_quality: int = 90
    concurrency: int = field(default=16, metadata={"help": "requests in flight per client actor"})
    requests_per_minute: float = field(default=0.0, metadata={"help": "HTTP request limit over all actors (0 = none)"})
    max_retries: int = field(default=6, metadata={"help": "retries on 429 / 5xx / timeouts / dropped connections"})
    timeout_s: float = field(default=60.0, metadata={"help": "per-request timeout"})
    backoff_s: float = field(default=1.0, metadata={"help": "first retry wait, doubled per retry (with jitter)"})
    max_backoff_s: float = 60.0
    price_input_per_mtok: float = field(default=0.0, metadata={"help": "USD per million prompt tokens (cost estimate)"})
    price_output_per_mtok: float = field(default=0.0, metadata={"help": "USD per million completion tokens"})


@dataclass
class VLMConfig(EndpointConfig):
    prompt: Literal["two-stage", "single-stage"] = field(
        default="two-stage", metadata={"help": "RL-VLM-F analysis + labeling calls, or one call"})
    segment: int = field(default=1, metadata={
        "help": "frames per clip: each side is the clip ending at the queried frame, sent as a sequence (1 = frames)"})
    segment_stride: int = field(default=1, metadata={"help": "steps between a clip's frames (sub-sampling)"})


@dataclass
class ProgressConfig(EndpointConfig):
    """GVL-style progress queries: K shuffled frames of one episode per request (``--labeler progress``)."""

    frames: int = field(default=8, metadata={"help": "frames K per request: K(K-1)/2 pairs per answer"})
    max_tokens: int = field(default=1024, metadata={"help": "reply limit (K lines plus any reasoning)"})
    max_images: int = field(default=0, metadata={"help": "most images sent this run (0 = no limit); rerun to continue"})


@dataclass
class ClipConfig:
    model: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture, or local-dir:/path"})
    pretrained: str = field(default="openai", metadata={"help": "open_clip tag or checkpoint file; '' = random init"})
    model_config: str = field(default="", metadata={"help": "extra architecture JSON for open_clip.add_model_config"})
    baseline: str = field(default="", metadata={"help": "VLM-RM baseline prompt; '' = plain cosine similarity"})
    alpha: float = field(default=0.5, metadata={"help": "VLM-RM projection strength (with --clip.baseline)"})
    margin: float = field(default=0.0, metadata={"help": "score gap below which the answer is -1"})
    batch_size: int = 64
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpu_fraction: float = field(default=0.25, metadata={"help": "GPU share per CLIP actor when the cluster has GPUs"})
    seed: int = field(default=0, metadata={"help": "torch seed for random-init models (tests)"})


@dataclass
class TeacherConfig:
    kind: Literal["oracle", "stochastic", "myopic", "mistake", "skip", "equal", "vlm-like"] = field(
        default="oracle", metadata={"help": "B-Pref teacher preset, or vlm-like (gap-dependent VLM error model)"})
    beta: float | None = field(default=None, metadata={"help": "rationality (stochastic preset: 1); none = perfectly rational"})
    gamma: float | None = field(default=None, metadata={"help": "myopic discount (myopic preset: 0.9)"})
    eps: float | None = field(default=None, metadata={"help": "mistake probability (mistake preset: 0.1)"})
    skip: float | None = field(default=None, metadata={"help": "skip threshold / average segment return (skip preset: 0.1)"})
    equal: float | None = field(default=None, metadata={"help": "tie threshold / average segment return (equal preset: 0.1)"})
    segment: int = field(default=1, metadata={"help": "frames per segment, ending at the queried frame"})
    seed: int = 0
    # vlm-like error model (robot_pref.feedback.teacher.VLMErrorModel); none = its default
    floor: float | None = field(default=None, metadata={"help": "vlm-like: accuracy at a zero gap (default 0.5)"})
    ceiling: float | None = field(default=None, metadata={"help": "vlm-like: accuracy at a large gap (0.95)"})
    midpoint: float | None = field(default=None, metadata={"help": "vlm-like: normalised gap of half-way accuracy (0.15)"})
    width: float | None = field(default=None, metadata={"help": "vlm-like: logistic width in normalised gap (0.05)"})
    position_bias: float | None = field(default=None, metadata={"help": "vlm-like: P(guess 'Image 1') when unsure (0.5)"})
    abstain: float | None = field(default=None, metadata={"help": "vlm-like: abstention rate at a zero gap (0.3)"})
    abstain_halflife: float | None = field(default=None, metadata={"help": "vlm-like: gap halving abstention (0.05)"})


@dataclass
class ReplayConfig:
    path: str = field(default="", metadata={"help": "recorded labels: .npz / .json / .csv with indices_1, indices_2, labels"})


def human_teacher() -> TeacherConfig:
    """The simulated person standing in for a human: a better teacher than the VLM (2% mistakes)."""
    return TeacherConfig(kind="mistake", eps=0.02)


@dataclass
class HybridConfig:
    """``--labeler hybrid``: a machine labeler answers every pair, a router sends its weak spots to people.

    The human budget is the smallest of the limits set: a count, a share of the pairs, minutes of
    human time at ``seconds_per_label`` each (0 = that limit unset; at least one must be set).
    """

    machine: str = field(default="teacher", metadata={
        "help": "machine labeler kind answering first (vlm | clip | progress | teacher | replay); its settings "
                "come from its own section (--vlm.*, --teacher.* ...)"})
    rule: str = field(default="uncertainty", metadata={
        "help": "routing rule (robot_pref.feedback.hybrid.RULES): uncertainty | abstain | disagreement | random"})
    human: Literal["queue", "teacher"] = field(default="queue", metadata={
        "help": "queue: write the routed pairs for `robot-pref label-ui` and merge what people answered so far; "
                "teacher: a simulated person (--hybrid.teacher.*) answers them now"})
    budget: int = field(default=0, metadata={"help": "most pairs sent to people (0 = no count limit)"})
    fraction: float = field(default=0.1, metadata={"help": "most pairs sent to people, as a share of the pairs"})
    minutes: float = field(default=0.0, metadata={"help": "most human minutes (with --hybrid.seconds-per-label)"})
    seconds_per_label: float = field(default=6.0, metadata={"help": "estimated human seconds per answer"})
    reward_model: str = field(default="", metadata={
        "help": "reward ensemble (fit-reward --out) whose disagreement ranks pairs (disagreement rule; "
                "uncertainty rule when the machine reports no confidence)"})
    queue: str = field(default="", metadata={"help": "queue file for label-ui (default: <out>/human_queue.json)"})
    overlap: float = field(default=0.0, metadata={
        "help": "simulated humans: share of routed pairs a second simulated person answers too (agreement)"})
    teacher: TeacherConfig = field(default_factory=human_teacher)


@dataclass
class LabelConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset with rendered frames"})
    camera: str = field(default="agentview_84", metadata={"help": "frame key (agentview_84) or camera name"})
    labeler: str = field(default="teacher",
                         metadata={"help": "vlm | progress | clip | teacher | replay | hybrid (or a registered type)"})
    pairs: int = field(default=1000, metadata={"help": "number of pairs to label (replay: 0 = all recorded; "
                                                      "progress: rounded up to whole requests)"})
    out: str = field(default="", metadata={"help": "labels directory (beside the dataset, never inside)"})
    sampler: str = field(default="uniform", metadata={"help": "uniform | same-time | disagreement"})
    seed: int = 0
    goal: str = field(default="", metadata={"help": "goal text (default: the dataset's episode goal)"})
    budget: int = field(default=0, metadata={"help": "most new queries (progress: requests) this run (0 = no limit); "
                                                      "rerun to continue"})
    workers: int = field(default=1, metadata={"help": "labeler actors (vlm, clip)"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: RAY_ADDRESS or local)"})
    reward_model: str = field(default="", metadata={"help": "reward checkpoint for --sampler disagreement"})
    pool_size: int = field(default=0, metadata={"help": "candidate pool for --sampler disagreement (0 = its default)"})
    progress: bool = True
    vlm: VLMConfig = field(default_factory=VLMConfig)
    gvl: ProgressConfig = field(default_factory=ProgressConfig)  # --labeler progress (`progress` is the bar)
    clip: ClipConfig = field(default_factory=ClipConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)


LABEL_TOKEN_ENV = "ROBOT_PREF_LABEL_TOKEN"  # like the arm server's ROBOT_PREF_TOKEN, a secret of its own


@dataclass
class LabelUIConfig:
    """``robot-pref label-ui``: the labeling page serving a hybrid run's human queue."""

    dataset: str = field(default="", metadata={"help": "zarr dataset the queue indexes into (its rendered frames)"})
    labels: str = field(default="", metadata={"help": "labels directory of the hybrid run (answers go to its store.sqlite)"})
    queue: str = field(default="", metadata={"help": "queue file (default: <labels>/human_queue.json)"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (non-loopback needs a token)"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    token: str | None = field(default=None, metadata={
        "help": f"shared secret annotators open the page with (?token=...); prefer the {LABEL_TOKEN_ENV} env var "
                "(a flag shows in ps)"})
    lease_s: float = field(default=300.0, metadata={"help": "seconds a shown pair stays reserved for its annotator"})
    overlap: float = field(default=0.0, metadata={
        "help": "share of the queue (its first pairs) a second person also answers, for human-human agreement"})


@dataclass
class LabelReportConfig:
    dataset: str = field(default="", metadata={"help": "the dataset the labels index into (needs ground truth)"})
    labels: str = field(default="", metadata={"help": "labels directory written by `robot-pref label`"})
    out: str = field(default="", metadata={"help": "where to write label_report.json/.png (default: the labels dir)"})
    bins: int = field(default=8, metadata={"help": "true-reward-gap bins of the accuracy plot"})


@dataclass
class LabelAuditConfig:
    dataset: str = field(default="", metadata={"help": "simulated dataset with rendered frames and ground-truth reward"})
    labelers: list[str] = field(default_factory=list, metadata={
        "help": "labeler YAML files, comma-separated: `robot-pref label` fields (labeler, teacher/vlm/gvl/clip "
                "sections ...) and an optional name"})
    out: str = field(default="", metadata={"help": "audit directory (default: <dataset>_labels/audit beside it)"})
    camera: str = "agentview_84"
    pairs: int = field(default=1000, metadata={"help": "pairs per labeler (the same pairs for every pair labeler)"})
    seed: int = 0
    gap_bins: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 1.0],
                                  metadata={"help": "edges of the normalised true-progress gap bins"})
    mock: bool = field(default=False, metadata={
        "help": "answer vlm/progress labelers from a local mock VLM: the dataset's ground truth through the "
                "vlm-like error model (default parameters)"})
    mock_progress_noise: float = field(default=5.0, metadata={"help": "mock: std of its progress answers, percent"})
    progress: bool = False
