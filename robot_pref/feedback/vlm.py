"""VLM labeler: ask any OpenAI-compatible chat-completions endpoint which frame better achieves the goal.

RL-VLM-F's two-stage query (arXiv 2402.03681): an analysis call with both images, then a
text-only labeling call that pastes the analysis and asks for 0 / 1 / -1; or a single call.
Async with bounded concurrency (one semaphore slot per query), a requests-per-minute spacing,
retries with exponential backoff on 429 / 5xx / timeouts / dropped connections that honour
Retry-After, and latency / tokens / estimated cost recorded per query. The API key is read
from the environment variable the config names and is held as a `Secret`.

Segment queries (``--vlm.segment N``): each side is the clip of N frames ending at the queried
frame (every ``--vlm.segment-stride`` steps, clipped at the episode start), sent as a sequence of
images; the label still indexes the queried (last) frames.

A reply that holds no label (no 0 / 1 / -1 line, cut off at max_tokens, or an empty or truncated
first-stage analysis, which is never pasted into the labeling call) is ``unparsable``: a
failure kept with its raw text, asked again on later runs (see `robot_pref.feedback.store`).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import logging
import os
import random
import re
import time
import urllib.parse

import numpy as np

from robot_pref.feedback.config import EndpointConfig, VLMConfig
from robot_pref.feedback.labelers import Labeler, Query, Secret
from robot_pref.feedback.store import ABSTAINED, FAILED, LABELED, UNPARSABLE, Answer

log = logging.getLogger(__name__)

PROMPT_VERSION = "rl-vlm-f/1"
QUESTIONS = ("1. What is shown in Image 1?\n2. What is shown in Image 2?\n"
             "3. The goal is {goal}. Is there any difference between Image 1 and Image 2 in terms of achieving the goal?")
ANSWER_FORMAT = ("Reply a single line of 0 if the goal is better achieved in Image 1, or 1 if it is better "
                 "achieved in Image 2. Reply -1 if unsure or if there is no difference.")
LABEL_PROMPT = ("Based on the text below to the questions:\n{questions}\n{analysis}\n\n"
                "Is the goal better achieved in Image 1 or Image 2?\n{answer_format}")
SINGLE_PROMPT = "The goal is {goal}. Is the goal better achieved in Image 1 or Image 2?\n{answer_format}"
MAX_RETRY_AFTER_S = 600.0


class RequestFailed(Exception):
    pass


def read_api_key(cfg: EndpointConfig) -> Secret:
    value = os.environ.get(cfg.api_key_env, "")
    if not value:
        log.warning("environment variable %s is not set: sending no API key (fine for local servers; "
                    "set it for hosted APIs)", cfg.api_key_env)
    return Secret(value or "EMPTY")


def encode_image(frame: np.ndarray, cfg: EndpointConfig) -> str:
    """A data URL of the frame (PNG or JPEG, optionally resized so its longer side is image_size)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(frame, dtype=np.uint8))
    if cfg.image_size:
        scale = cfg.image_size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    if cfg.image_format == "jpeg":
        img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
    else:
        img.save(buf, format="PNG")
    return f"data:image/{cfg.image_format};base64,{base64.b64encode(buf.getvalue()).decode()}"


def image_messages(urls_a: list[str], urls_b: list[str], text: str) -> list[dict]:
    """Both sides, each one image or (segment queries) a sequence of frames, then the question."""
    def side(name: str, urls: list[str]) -> list[dict]:
        head = f"{name}:" if len(urls) == 1 else f"{name} (a sequence of {len(urls)} frames, oldest first):"
        return [{"type": "text", "text": head}, *({"type": "image_url", "image_url": {"url": u}} for u in urls)]

    intro = "Consider the following two images:" if len(urls_a) == 1 else "Consider the following two clips:"
    a, b = side("Image 1", urls_a), side("Image 2", urls_b)
    a[0]["text"] = f"{intro}\n{a[0]['text']}"
    return [{"role": "user", "content": [*a, *b, {"type": "text", "text": text}]}]


_LABEL_LINE = re.compile(r"^(?:(?:answer|label|output)\s*[:=]\s*)?(-1|0|1)$", re.IGNORECASE)


def parse_label(text: str | None) -> int | None:
    """0 / 1 / -1 from the reply's last non-empty line (markdown and punctuation stripped), else None."""
    lines = [ln.strip().strip("*`'\". ").strip() for ln in (text or "").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return None
    match = _LABEL_LINE.match(lines[-1])
    return int(match.group(1)) if match else None


SECRET_QUERY = ("key", "token", "secret", "sig", "auth", "password")


def endpoint_identity(base_url: str) -> str:
    """The endpoint as part of the cache key: scheme and host lower-cased, default port and trailing
    slash dropped; credentials (user:password@, key/token query parameters) never included."""
    u = urllib.parse.urlsplit(base_url.strip())
    scheme, host = u.scheme.lower(), (u.hostname or "").lower()
    port = u.port if u.port and (scheme, u.port) not in (("http", 80), ("https", 443)) else None
    netloc = f"[{host}]" if ":" in host else host
    query = [(k, v) for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True)
             if not any(word in k.lower() for word in SECRET_QUERY)]
    return urllib.parse.urlunsplit((scheme, netloc + (f":{port}" if port else ""), u.path.rstrip("/"),
                                    urllib.parse.urlencode(sorted(query)), ""))


def endpoint_settings(c: EndpointConfig) -> dict:
    """What of the endpoint and image encoding changes an answer (cache key; never the key)."""
    return {"endpoint": endpoint_identity(c.base_url), "model": c.model, "temperature": c.temperature,
            "max_tokens": c.max_tokens, "image_format": c.image_format, "image_size": c.image_size,
            **({"jpeg_quality": c.jpeg_quality} if c.image_format == "jpeg" else {})}


def reply_problem(text: str, finish_reason: str | None) -> str | None:
    """Why a reply cannot be used as it is (empty, cut off at max_tokens), or None."""
    if finish_reason == "length":
        return "truncated (finish_reason=length; raise --vlm.max-tokens)"
    if not text.strip():
        return "empty"
    return None


def retry_after_s(headers) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, or Retry-After as seconds or HTTP date)."""
    if headers is None:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        date = email.utils.parsedate_to_datetime(value)
        return max(0.0, date.timestamp() - time.time()) if date else None


class VLMLabeler(Labeler):
    type = "vlm"
    remote = True
    chunk_size = 1  # one query per actor call: each answer is committed as it arrives

    def __init__(self, cfg: EndpointConfig, goal: str, dataset=None, api_key: Secret | None = None, workers: int = 1):
        super().__init__(cfg, goal, dataset)
        self.api_key = api_key if api_key is not None else read_api_key(cfg)
        self.segment, self.segment_stride = getattr(cfg, "segment", 1), getattr(cfg, "segment_stride", 1)
        if self.segment < 1 or self.segment_stride < 1:
            raise ValueError(f"--vlm.segment and --vlm.segment-stride must be >= 1, got {self.segment}, "
                             f"{self.segment_stride}")
        # the per-minute limit is shared by all actors of the run
        self.interval = 60.0 * max(1, workers) / cfg.requests_per_minute if cfg.requests_per_minute > 0 else 0.0
        self._next_slot = 0.0
        self._client = self._loop = self._sem = None

    def settings(self) -> dict:
        clips = {"segment": self.segment, "segment_stride": self.segment_stride} if self.segment > 1 else {}
        return {**endpoint_settings(self.cfg), "prompt": self.cfg.prompt, "prompt_version": PROMPT_VERSION, **clips}

    @classmethod
    def actor_options(cls, cfg: VLMConfig, workers: int, cluster_gpus: float) -> dict:
        return {"num_cpus": 0.5, "max_concurrency": max(100, 4 * cfg.concurrency)}  # I/O bound

    @classmethod
    def in_flight(cls, cfg: VLMConfig, n_actors: int) -> int:
        return 2 * cfg.concurrency * n_actors

    @classmethod
    def actor_kwargs(cls, cfg: VLMConfig, workers: int) -> dict:
        return {"api_key": read_api_key(cfg), "workers": workers}

    def _bind(self):
        """Client and semaphore belong to one event loop; rebuild them when called from another."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            import openai

            self._client = openai.AsyncOpenAI(api_key=self.api_key.get(), base_url=self.cfg.base_url,
                                              timeout=self.cfg.timeout_s, max_retries=0)
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (call before its event loop ends, when the labeler is used directly)."""
        if self._client is not None:
            await self._client.close()
            self._client = self._loop = None

    async def label(self, queries: list[Query]) -> list[Answer]:
        self._bind()
        return list(await asyncio.gather(*(self.ask(q) for q in queries)))

    async def ask(self, q: Query) -> Answer:
        async with self._sem:
            t0 = time.perf_counter()
            usage = {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0}
            try:
                url_a, url_b = ([encode_image(f, self.cfg) for f in (side if side.ndim == 4 else side[None])]
                                for side in (q.frame_a, q.frame_b))
                fmt = {"goal": self.goal, "answer_format": ANSWER_FORMAT}
                problem = None
                if self.cfg.prompt == "two-stage":
                    questions = QUESTIONS.format(goal=self.goal)
                    analysis, finish = await self.complete(image_messages(url_a, url_b, questions), usage)
                    problem = reply_problem(analysis, finish)
                    if problem:  # never paste a missing or cut-off analysis into the labeling call
                        text, raw, problem = "", analysis, f"analysis {problem}"
                    else:
                        text, finish = await self.complete([{"role": "user", "content": LABEL_PROMPT.format(
                            questions=questions, analysis=analysis, **fmt)}], usage)
                        raw = f"{analysis}\n\n[label]\n{text}"
                else:
                    text, finish = await self.complete(image_messages(url_a, url_b, SINGLE_PROMPT.format(**fmt)),
                                                       usage)
                    raw = text
            except RequestFailed as err:
                return q.answer(-1, FAILED, str(err), latency_s=time.perf_counter() - t0, **usage)
            problem = problem or reply_problem(text, finish)
            label = None if problem else parse_label(text)
            if label is None and not problem:
                problem = "no line of 0, 1 or -1 at the end of the reply"
            status = UNPARSABLE if label is None else ABSTAINED if label == -1 else LABELED
            cost = (usage["prompt_tokens"] * self.cfg.price_input_per_mtok
                    + usage["completion_tokens"] * self.cfg.price_output_per_mtok) / 1e6
            return q.answer(-1 if label is None else label, status, raw, latency_s=time.perf_counter() - t0,
                            cost_usd=cost, model=self.cfg.model, images=len(url_a) + len(url_b), **usage,
                            **({"reason": problem} if problem else {}))

    async def _throttle(self) -> None:
        if self.interval:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
            await asyncio.sleep(slot - now)

    async def complete(self, messages: list[dict], usage: dict) -> tuple[str, str | None]:
        """One chat completion with retries: the reply text ('' if it had none) and its finish_reason."""
        import openai
        from openai.types.chat import ChatCompletion

        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            await self._throttle()
            usage["attempts"] += 1
            try:
                # the client's documented raw `post` (same errors, parsing and auth as
                # chat.completions.create) skips its per-field TypedDict transform of the messages,
                # ~2 ms of CPU per request with two base64 images: the throughput limit at high concurrency
                resp = await self._client.post("/chat/completions", cast_to=ChatCompletion, body={
                    "model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                    "max_tokens": self.cfg.max_tokens})
            except openai.APIStatusError as err:
                if err.status_code != 429 and err.status_code < 500:  # a bad request: retrying cannot help
                    raise RequestFailed(f"HTTP {err.status_code} from {self.cfg.base_url}: {err.message}") from None
                last = f"HTTP {err.status_code}"
                wait = retry_after_s(err.response.headers)
            except openai.APIConnectionError as err:  # timeouts, refused and dropped connections
                last, wait = type(err).__name__, None
            except openai.APIError as err:  # e.g. a 200 whose body is not a chat completion
                raise RequestFailed(f"{type(err).__name__} from {self.cfg.base_url}: {err}") from None
            else:
                if resp.usage is not None:
                    usage["prompt_tokens"] += resp.usage.prompt_tokens or 0
                    usage["completion_tokens"] += resp.usage.completion_tokens or 0
                if not resp.choices:
                    return "", None
                return resp.choices[0].message.content or "", resp.choices[0].finish_reason
            if attempt == self.cfg.max_retries:
                break
            if wait is None:
                wait = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
            log.debug("retrying after %s in %.2fs (attempt %d)", last, wait, attempt + 1)
            await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
        raise RequestFailed(f"gave up after {usage['attempts']} attempts, last error {last}")
