"""The rating server: a FastAPI app (JSON API, the page, the images) run by uvicorn.

    GET  /                          the rating page          GET /status   the team's status page
    GET  /api/config                {mode, items, password_required}
    POST /api/login                 {"password"} -> sets the session cookie
    GET  /api/next?rater=NAME       {"item_id", "image_url", "prompt", "responses": [{"response_id", "text"}]}
                                    or {"done": true}
    POST /api/ratings               {"rater", "item_id", "scores": {"<response_id>": 1..5}} -> 200 once committed
    POST /api/skip                  {"rater", "item_id"}
    GET  /api/previous?rater=NAME&item_id=ID   the item before, as /api/next plus "scores"; or {"first": true}
    GET  /api/rater?rater=NAME      {"rater", "done", "skipped", "items"}
    GET  /api/progress              {mode, items, removed_items, raters: [...], alpha: {...}}
    GET  /images/ITEM_ID            the item's image (only items of the task file; looked up by id)

Images are looked up by item id, never by a path from the request, and a file that now resolves elsewhere
than when the task file was checked (a symlink swapped in) is refused. Page and assets are a fixed set of
files shipped in `static/`; nothing is fetched from the internet.
"""

from __future__ import annotations

import mimetypes
import socket
import sqlite3
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from vlm_tune.core.errors import UserError
from vlm_tune.rate.guard import (
    COOKIE,
    SECURITY_HEADERS,
    ApiError,
    Gate,
    error_response,
    item_id_field,
    only_fields,
    oversize,
    rater_name,
    read_json,
    shown,
)
from vlm_tune.rate.progress import Progress
from vlm_tune.rate.queue import RaterQueue, item_payload
from vlm_tune.rate.store import RatingsStore
from vlm_tune.rate.tasks import TaskItem

STATIC_DIR = Path(__file__).parent / "static"
PAGES = {"/": "rate.html", "/status": "status.html"}
ASSETS = ("rate.js", "status.js", "common.js", "style.css")
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8"}
LOGIN_FAILURE_DELAY_S = 0.5  # slows password guessing


# --- request checks ---


def parse_rating(body: dict, items: dict[str, TaskItem]) -> tuple[str, TaskItem, dict[str, int]]:
    """(rater, item, scores) of a POST /api/ratings body; ApiError names the first problem."""
    only_fields(body, ("rater", "item_id", "scores"))
    rater = rater_name(body.get("rater"))
    item_id = item_id_field(body.get("item_id"))
    item = items.get(item_id)
    if item is None:
        raise ApiError(404, f"unknown item {shown(item_id)}")
    scores = body.get("scores")
    if not isinstance(scores, dict) or not scores:
        raise ApiError(400, "scores must be an object {response_id: 1..5}")
    known = [rid for rid, _ in item.responses]
    for response_id, score in scores.items():
        if response_id not in known:
            raise ApiError(400, f"unknown response {shown(response_id)} for item {item_id}")
        if type(score) is not int or not 1 <= score <= 5:
            raise ApiError(400, f"score for response {response_id} must be an integer 1-5, got {shown(score)}")
    missing = [rid for rid in known if rid not in scores]
    if missing:
        raise ApiError(400, f"scores missing for response(s) {', '.join(missing)}: score every candidate")
    return rater, item, {rid: scores[rid] for rid in known}


def _static(name: str) -> Response:
    path = STATIC_DIR / name
    return Response(path.read_bytes(), media_type=MEDIA_TYPES[path.suffix])


# --- the app ---


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return error_response(422, f"bad request: {'.'.join(map(str, first.get('loc', [])))} {first.get('msg', '')}")

    @app.exception_handler(sqlite3.OperationalError)
    async def busy(request, exc):
        return error_response(503, f"the ratings database is busy, try again ({exc})")

    @app.middleware("http")
    async def headers(request: Request, call_next):
        too_big = oversize(request.scope)
        response = error_response(too_big.status, str(too_big)) if too_big else await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response


def _add_pages(app: FastAPI) -> None:
    for route, name in PAGES.items():
        app.add_api_route(route, lambda name=name: _static(name), methods=["GET"], include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in ASSETS:
            raise ApiError(404, "not found")
        return _static(name)


def _add_session_routes(app: FastAPI, gate: Gate, mode: str, n_items: int) -> None:
    @app.get("/api/config")
    def config():
        return {"mode": mode, "items": n_items, "password_required": gate.required}

    @app.post("/api/login")
    async def login(request: Request):
        body = await read_json(request)
        only_fields(body, ("password",))
        if not gate.accepts(body.get("password")):
            await anyio.sleep(LOGIN_FAILURE_DELAY_S)
            raise ApiError(401, "wrong password")
        response = JSONResponse({"ok": True})
        if gate.token:
            response.set_cookie(COOKIE, gate.token, httponly=True, samesite="strict", max_age=30 * 24 * 3600)
        return response


def _add_rating_routes(app: FastAPI, store: RatingsStore, queue: RaterQueue, auth) -> None:
    @app.get("/api/next", dependencies=[Depends(auth)])
    def next_item(rater: str = ""):
        item = queue.next_item(rater_name(rater))
        return {"done": True} if item is None else item_payload(item, rater_name(rater))

    @app.get("/api/previous", dependencies=[Depends(auth)])
    def previous_item(rater: str = "", item_id: str = ""):
        name = rater_name(rater)
        item = queue.previous_item(name, item_id or None)
        if item is None:
            return {"first": True}
        return {**item_payload(item, name), "scores": store.scores_of(name, item.item_id)}

    @app.get("/api/rater", dependencies=[Depends(auth)])
    def rater_counts(rater: str = ""):
        return queue.counts(rater_name(rater))

    @app.post("/api/ratings", dependencies=[Depends(auth)])
    async def post_rating(request: Request):
        rater, item, scores = parse_rating(await read_json(request), queue.items)
        await run_in_threadpool(store.record, rater, item.item_id, scores)  # returns after COMMIT
        return {"ok": True, **await run_in_threadpool(queue.counts, rater)}

    @app.post("/api/skip", dependencies=[Depends(auth)])
    async def post_skip(request: Request):
        body = await read_json(request)
        only_fields(body, ("rater", "item_id"))
        rater, item_id = rater_name(body.get("rater")), item_id_field(body.get("item_id"))
        if item_id not in queue.items:
            raise ApiError(404, f"unknown item {shown(item_id)}")
        await run_in_threadpool(store.skip, rater, item_id)
        return {"ok": True, **await run_in_threadpool(queue.counts, rater)}


def _add_data_routes(app: FastAPI, queue: RaterQueue, progress: Progress, auth) -> None:
    @app.get("/api/progress", dependencies=[Depends(auth)])
    def team_progress():
        return progress.payload()

    @app.get("/images/{item_id}", dependencies=[Depends(auth)])
    def image(item_id: str):
        item = queue.items.get(item_id)
        if item is None:
            raise ApiError(404, "no such image")
        try:
            real = item.image_path.resolve(strict=True)
        except OSError:
            raise ApiError(404, "the image file is gone") from None
        if real != item.image_path or not real.is_file():
            raise ApiError(403, "the image file changed since the server started (now a link elsewhere)")
        media_type = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
        return FileResponse(real, media_type=media_type, headers={"Cache-Control": "private, max-age=600"})


def create_app(store: RatingsStore, mode: str, password: str | None = None) -> FastAPI:
    """The app over the store's current items (synchronise the task file first)."""
    missing = [name for name in (*PAGES.values(), *ASSETS) if not (STATIC_DIR / name).is_file()]
    if missing:
        raise UserError(f"the rating page's files are missing from this install ({STATIC_DIR}: {', '.join(missing)})")
    items = store.items()
    queue = RaterQueue(store, items)
    progress = Progress(store, mode, len(items), len(store.items(removed=True)))
    gate = Gate(password, store.meta("token_salt") or "")

    def auth(request: Request) -> None:
        gate.check(request)

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_pages(app)
    _add_session_routes(app, gate, mode, len(items))
    _add_rating_routes(app, store, queue, auth)
    _add_data_routes(app, queue, progress, auth)
    return app


# --- running ---


def check_port(host: str, port: int) -> None:
    """UserError if host:port cannot be bound (uvicorn would only log it and exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port") from None


def run_server(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            limit_concurrency=128, timeout_keep_alive=5, server_header=False,
                            h11_max_incomplete_event_size=16 * 1024)  # bounds request line + headers
    uvicorn.Server(config).run()
