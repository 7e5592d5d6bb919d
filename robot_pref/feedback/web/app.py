"""`robot-pref label-ui`: the labeling page (FastAPI + uvicorn, plain HTML/JS in ``static/``).

One process serves one queue: the page asks `/api/next` for the pair leased to its annotator, shows the
two frames (or clips) from `/frames/{index}.png`, and posts each key press to `/api/answer` or
`/api/undo`, which commit to the labels directory's store before they reply (`LabelSession`). All
session endpoints run on the event loop's one thread, so requests never interleave and the SQLite
connection stays on the thread that opened it.

Binds 127.0.0.1 unless told otherwise; any other address needs a shared token (``--token`` or, better,
the ``ROBOT_PREF_LABEL_TOKEN`` environment variable, like the arm server's ``ROBOT_PREF_TOKEN``).
Annotators open ``http://HOST:PORT/?token=SECRET`` once; the page then keeps it in a cookie. The token
is sent in the clear: across untrusted networks tunnel the port (ssh -L) instead.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import logging
import os
from pathlib import Path

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.feedback.config import LABEL_TOKEN_ENV, LabelUIConfig
from robot_pref.feedback.human_queue import QUEUE_NAME, merge_hint, read_queue
from robot_pref.feedback.store import STORE_NAME, LabelStore
from robot_pref.feedback.web.session import Conflict, LabelSession

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "robot_pref_label_token"


def png(frame: np.ndarray) -> bytes:
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, frame, extension=".png")
    return buf.getvalue()


def create_app(cfg: LabelUIConfig, token: str | None = None):
    """The FastAPI app; the dataset, queue and store open when it starts (in the serving thread)."""
    if not cfg.dataset or not cfg.labels:
        raise ValueError("label-ui needs --dataset X.zarr and --labels DIR (the labels directory of a "
                         "`robot-pref label --labeler hybrid` run)")
    queue_path = Path(cfg.queue) if cfg.queue else Path(cfg.labels) / QUEUE_NAME
    dataset = TrajectoryDataset.open(cfg.dataset)
    queue = read_queue(queue_path)
    queue.check_dataset(dataset)
    frame_key = f"frames/{queue.camera}"
    if queue.camera not in dataset.frame_keys:
        raise ValueError(f"the queue shows camera {queue.camera!r}, which {cfg.dataset} has no frames of "
                         f"(it has {dataset.frame_keys}); render it with `robot-pref render --dataset {cfg.dataset}`")
    version = dataset.identity[:16]  # in frame URLs: a browser never shows another dataset's cached frames

    @contextlib.asynccontextmanager
    async def lifespan(app):
        store = LabelStore(Path(cfg.labels) / STORE_NAME)
        app.state.session = LabelSession(queue, dataset, store, cfg.lease_s, cfg.overlap)
        log.info("labeling page: %d queued pairs from %s, answers -> %s", len(queue), queue_path, store.path)
        try:
            yield
        finally:
            store.close()

    app = FastAPI(title="robot_pref labeling page", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if not token:
            return await call_next(request)
        given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                 or request.headers.get("authorization", "").removeprefix("Bearer "))
        if not hmac.compare_digest(given.encode(), token.encode()):
            return PlainTextResponse("this labeling page needs its token: open it as http://HOST:PORT/?token=SECRET "
                                     "(ask whoever started `robot-pref label-ui`)", status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    def state(session: LabelSession, person: str, pos: int | None, message: str = "") -> dict:
        return {"goal": queue.goal, "segment": queue.segment, "version": version, "message": message,
                "pair": session.pair_view(pos), "progress": session.progress(person)}

    def who(person: str) -> str:
        person = person.strip()
        if not person or len(person) > 64:
            raise HTTPException(400, "enter your name (1-64 characters) before labeling")
        return person

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    async def health():
        return {"ok": True, "queue": len(queue)}

    @app.get("/api/next")
    async def next_pair(request: Request, person: str):
        session = request.app.state.session
        person = who(person)
        return state(session, person, session.next_for(person))

    @app.post("/api/answer")
    async def answer(request: Request, person: str = Body(), a: int = Body(), b: int = Body(),
                     choice: str = Body(), time_spent_s: float = Body(0.0)):
        session = request.app.state.session
        person = who(person)
        try:
            session.answer(person, (a, b), choice, time_spent_s)
        except ValueError as err:
            raise HTTPException(400, str(err)) from err
        except Conflict as err:
            return JSONResponse(state(session, person, session.next_for(person), str(err)), status_code=409)
        return state(session, person, session.next_for(person))

    @app.post("/api/undo")
    async def undo(request: Request, person: str = Body(embed=True)):
        session = request.app.state.session
        person = who(person)
        try:
            pos = session.undo(person)
        except Conflict as err:
            return JSONResponse(state(session, person, session.next_for(person), str(err)), status_code=409)
        return state(session, person, pos, "undone: answer this pair again")

    @app.get("/frames/{index}.png")
    async def frame(index: int):
        if not 0 <= index < dataset.n_frames:
            raise HTTPException(404, f"frame {index} is outside the dataset (0..{dataset.n_frames - 1})")
        return Response(png(dataset.get(frame_key, np.asarray([index]))[0]), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def label_ui(cfg: LabelUIConfig) -> None:
    """Serve the labeling page until interrupted."""
    import uvicorn

    token = cfg.token or os.environ.get(LABEL_TOKEN_ENV)
    if cfg.token:
        log.warning("a token given as --token (or in a config file) is readable by other users (ps, shell history); "
                    "export %s=SECRET instead", LABEL_TOKEN_ENV)
    if cfg.host not in LOOPBACK and not token:
        raise ValueError(f"binding the labeling page to {cfg.host!r} exposes it to the network; set a shared token "
                         f"annotators open it with (export {LABEL_TOKEN_ENV}=SECRET; --token also works but shows in "
                         "ps), or bind 127.0.0.1")
    app = create_app(cfg, token)
    log.info("labeling page at http://%s:%d/%s; when people are done, stop it (Ctrl-C) and %s", cfg.host,
             cfg.port, "?token=..." if token else "", merge_hint(cfg.labels))
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
