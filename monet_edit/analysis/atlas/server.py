"""`atlas serve`: the atlas as JSON endpoints and a small web app (Starlette on uvicorn).

Every page is the same static shell (static/index.html) whose script renders from the JSON API,
so the browser shows exactly what the API says. Nothing is fetched from outside the server.
A bad request is a 4xx JSON {"error": message}; only a bug can give a 500.
"""

from __future__ import annotations

import json
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ...errors import UsageError
from .query import QueryError, Reader, integer

STATIC = Path(str(resources.files("monet_edit.analysis.atlas").joinpath("static")))
MAX_BODY = 16_384

ENDPOINTS = [
    {"path": "/api", "method": "GET", "what": "this list"},
    {"path": "/api/atlas", "method": "GET", "what": "model, corpora, parameters and provenance of the atlas"},
    {"path": "/api/expert/{group}/{i}/{j}", "method": "GET", "params": {"k": "occurrences (1..top, default top)"},
     "what": "one expert: top-k occurrences with context and corpus, density, usage per corpus, experts "
             "sharing its sub-experts (i,*) and (*,j)"},
    {"path": "/api/search", "method": "GET",
     "params": {"q": "a word or token, #TOKEN_ID, an expert G/I/J, G:I,J or G:ID, or corpus:NAME",
                "limit": "results (1..1000, default 50)", "group": "only this group"},
     "what": "experts ranked for the query (for a word: how many of their top-k occurrences it is)"},
    {"path": "/api/corpus/{name}", "method": "GET",
     "params": {"group": "only this group", "limit": "results (1..1000, default 50)",
                "min_active": "least active tokens on the corpus (default 3)"},
     "what": "the experts most specific to a corpus of the atlas"},
    {"path": "/api/mask", "method": "POST",
     "body": {"group": "int", "i": "int", "j": "int", "text": "the text to run (at most 2000 characters)",
              "new_tokens": "greedy continuation length (0..64, default 16)"},
     "what": "before/after masking the expert on a text: per-token weight and loss, continuations"},
]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(reader: Reader, masking=None, masking_note: str = "") -> Starlette:
    """The web app over an opened atlas; `masking` (a masking.Masking) powers POST /api/mask."""

    async def page(request: Request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def api(request: Request):
        return JSONResponse({"endpoints": ENDPOINTS})

    async def atlas(request: Request):
        return JSONResponse(dict(reader.summary(), masking=masking is not None, masking_note=masking_note))

    def expert(request: Request):
        p = request.path_params
        return JSONResponse(reader.expert(p["group"], p["i"], p["j"], request.query_params.get("k")))

    def search(request: Request):
        q = request.query_params
        return JSONResponse(reader.search(q.get("q"), q.get("limit"), q.get("group")))

    def corpus(request: Request):
        q = request.query_params
        return JSONResponse(reader.corpus(request.path_params["name"], q.get("group"), q.get("limit"),
                                          q.get("min_active")))

    async def mask(request: Request):
        from starlette.concurrency import run_in_threadpool

        if masking is None:
            raise QueryError(f"masking is unavailable: {masking_note}", 503)
        body = await request.body()
        if len(body) > MAX_BODY:
            raise QueryError(f"request body is {len(body)} bytes; at most {MAX_BODY}", 413)
        try:
            data = json.loads(body)
        except ValueError:
            raise QueryError("body must be JSON: {\"group\": G, \"i\": I, \"j\": J, \"text\": \"...\"}") from None
        if not isinstance(data, dict):
            raise QueryError("body must be a JSON object with group, i, j and text")
        g, i, j = reader.check(data.get("group"), data.get("i"), data.get("j"))
        new_tokens = integer(data.get("new_tokens"), "new_tokens", low=0, high=64, default=16)
        result = await run_in_threadpool(masking.run, g, i, j, data.get("text"), new_tokens)
        return JSONResponse(result)

    async def bad_request(request: Request, exc: Exception):
        return _error(getattr(exc, "status", 400), str(exc))

    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404 and not request.url.path.startswith("/api"):
            return _error(404, f"no page {request.url.path}")
        return _error(exc.status_code, exc.detail if exc.status_code != 404 else f"no endpoint {request.url.path} "
                      f"(GET /api lists them)")

    async def internal(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    routes = [
        Route("/", page), Route("/search", page), Route("/expert/{group}/{i}/{j}", page),
        Route("/corpus/{name}", page),
        Route("/api", api), Route("/api/atlas", atlas), Route("/api/expert/{group}/{i}/{j}", expert),
        Route("/api/search", search), Route("/api/corpus/{name}", corpus),
        Route("/api/mask", mask, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={UsageError: bad_request, HTTPException: http_error,
                                                         Exception: internal})


def open_app(atlas_dir: str | Path, *, model: str | None = None, device: Any = None,
             say=None) -> tuple[Starlette, Reader]:
    """Open the atlas and its model (by default the one it was built from, which must still have
    the atlas's fingerprint). Without the model everything but masking is served."""
    from ...model import checkpoint
    from .masking import Masking
    from .store import open_atlas, open_tokenizer

    atlas = open_atlas(atlas_dir)
    recorded = atlas.meta["model"]
    source = model or recorded["directory"]
    masking, note = None, ""
    try:
        ckpt = checkpoint.of(source)
    except UsageError as exc:
        if model is not None:
            raise
        ckpt, note = None, f"the atlas's model is not here ({exc}); pass --model"
        if say is not None:
            say(f"warning: {note}; masking is off")
    if ckpt is not None:
        if ckpt.fingerprint != recorded["fingerprint"]:
            raise UsageError(f"{source}: model fingerprint {ckpt.fingerprint[:12]} is not the atlas's "
                             f"({recorded['fingerprint'][:12]}); pass the model the atlas was built from")
        masking = Masking(ckpt, device=device)
    reader = Reader(atlas, open_tokenizer(atlas.dir))
    return create_app(reader, masking, note), reader


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (so a busy port or a bad host is one line, not a server log)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host!r}: cannot resolve ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.listen(128)
    return sock


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve until Ctrl-C (uvicorn finishes the open requests, then re-raises the interrupt: for a
    server that is the normal way to stop, not a failure)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
