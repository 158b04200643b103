"""The dashboard's web application (Starlette): HTML pages rendered once, JSON endpoints the
pages poll every two seconds, downloads, and the cancel/resume actions when allowed.

Read-only unless `allow_actions`; with a `token`, every request must carry it (header
`Authorization: Bearer T` or `X-NAS-Token: T`, or the cookie `?token=T` sets once).
Actions are POSTs that must carry the header `X-NAS-Action` (a cross-site form or script
cannot send it without a CORS preflight, which this server never grants)."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import tempfile
import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import LeaseHeldError, NasError
from ..storage import Storage
from . import _views as views

HERE = Path(__file__).parent
TOKEN_COOKIE = "nas_dashboard_token"
ACTION_HEADER = "x-nas-action"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_PAGE = 500
CACHED_CHARTS = 64  # figures kept (JSON text), the least recently used dropped first
_PLOTLY: dict[str, bytes] = {}


def plotly_js() -> bytes:
    """plotly.js as shipped inside the plotly Python package (no CDN), read once."""
    if "js" not in _PLOTLY:
        from plotly.offline import get_plotlyjs

        _PLOTLY["js"] = get_plotlyjs().encode()
    return _PLOTLY["js"]


# ---- access -------------------------------------------------------------------------------
class TokenMiddleware:
    """Refuse every request without the token (401). `?token=T` on a page sets a cookie
    (HttpOnly, SameSite=Strict) and redirects to the same URL without it, so the token
    does not stay in the address bar or the history."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    def _matches(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        bearer = request.headers.get("authorization", "")
        offered = [bearer[7:] if bearer.lower().startswith("bearer ") else None,
                   request.headers.get("x-nas-token"), request.cookies.get(TOKEN_COOKIE)]
        if any(self._matches(v) for v in offered):
            await self.app(scope, receive, send)
            return
        if self._matches(request.query_params.get("token")) and request.method == "GET":
            await self._set_cookie(request)(scope, receive, send)
            return
        await PlainTextResponse("a token is required: open the dashboard's URL with "
                                "?token=... once, or send the header Authorization: Bearer "
                                "...", status_code=401)(scope, receive, send)

    def _set_cookie(self, request: Request) -> Response:
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response


class SecurityHeaders:
    """No inline or foreign scripts, no framing, no sniffing. 'unsafe-eval': plotly.js's WebGL
    traces (the parallel coordinates) compile their shaders' drawing code with `Function`
    (regl); without it they show "WebGL is not supported" instead of the chart."""

    POLICY = ("default-src 'self'; script-src 'self' 'unsafe-eval'; "
              "style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
              "form-action 'self'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def add_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [
                    (b"content-security-policy", self.POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
            await send(message)

        await self.app(scope, receive, add_headers)


# ---- the application ----------------------------------------------------------------------
class Dashboard:
    """The routes over one `Storage`. Every database call runs in a worker thread."""

    def __init__(self, storage: Storage, allow_actions: bool) -> None:
        self.storage = storage
        self.allow_actions = allow_actions
        self.cache: OrderedDict[tuple[Any, ...], tuple[Any, str]] = OrderedDict()
        # figures are computed one at a time: they are pure Python under the GIL (threads
        # would not run them faster), and a figure's first call imports numpy, plotly's
        # classes or a space's module, which plotly reads from sys.modules half imported
        # when two threads race ("partially initialized module 'numpy'", seen under load)
        self.figures = threading.Lock()
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(["html"]))

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(partial(function, self.storage, *args, **kwargs))

    def page(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(allow_actions=self.allow_actions,
                                                        **context)
        return HTMLResponse(html, status_code=status_code)

    def not_found(self, request: Request, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=404)
        return self.page("error.html", status_code=404, title="not found", message=message)

    # -- pages --
    async def jobs_page(self, request: Request) -> Response:
        return self.page("jobs.html", title="jobs", jobs=await self._call(views.jobs_list))

    async def job_page(self, request: Request) -> Response:
        job_id = _path_int(request, "job")
        summary = await self._call(views.job_summary, job_id, self.allow_actions)
        devices = await self._call(views.job_devices, job_id)
        spec = {"objectives": summary["objectives"], "constraints": summary["constraints"]}
        return self.page("job.html", title=f"job {job_id}", job=summary, devices=devices,
                         device=views.default_device(spec, devices))

    async def trial_page(self, request: Request) -> Response:
        job_id, number = _path_int(request, "job"), _path_int(request, "trial")
        trial = await self._call(views.trial_detail, job_id, number)
        picture = await asyncio.to_thread(_picture, trial["space"], trial["arch"],
                                          trial["space_args"])
        return self.page("trial.html", title=f"job {job_id} trial {number}", trial=trial,
                         picture=picture)

    # -- JSON --
    async def api_jobs(self, request: Request) -> Response:
        return JSONResponse(await self._call(views.jobs_list))

    async def api_job(self, request: Request) -> Response:
        job_id = _path_int(request, "job")
        return JSONResponse(await self._call(views.job_summary, job_id, self.allow_actions))

    async def cached(self, key: tuple[Any, ...], job_id: int, compute: Any) -> str:
        """`compute()`'s JSON text, computed again only when a trial of the job finished
        since (charts over 10^5 trials take seconds; every open page asks for them)."""
        signature = await self._call(views.finished_signature, job_id)
        hit = self.cache.get(key)
        if hit is not None and hit[0] == signature:
            self.cache.move_to_end(key)
            return hit[1]
        body = await asyncio.to_thread(self._locked, compute)
        self.cache[key] = (signature, body)
        while len(self.cache) > CACHED_CHARTS:
            self.cache.popitem(last=False)
        return body

    def _locked(self, compute: Any) -> str:
        with self.figures:
            return compute()

    async def api_chart(self, request: Request) -> Response:
        job_id, kind = _path_int(request, "job"), request.path_params["kind"]
        if kind not in views.CHARTS:
            raise NotFound(f"no chart {kind!r} (charts: {', '.join(views.CHARTS)})")
        body = await self.cached(("chart", job_id, kind), job_id,
                                 partial(views.job_chart, self.storage, job_id, kind))
        return Response(body, media_type="application/json")

    async def api_pareto(self, request: Request) -> Response:
        job_id = _path_int(request, "job")
        device = request.query_params.get("device") or None
        budget = _query_float(request, "max_latency_ms")

        def panel() -> str:
            data, figure = views.pareto_panel(self.storage, job_id, device, budget)
            return _json_text({**{k: json.dumps(v) for k, v in data.items()},
                               "figure": figure})

        body = await self.cached(("pareto", job_id, device, budget), job_id, panel)
        return Response(body, media_type="application/json")

    async def api_best(self, request: Request) -> Response:
        job_id = _path_int(request, "job")
        device = request.query_params.get("device") or None
        budget = _query_float(request, "max_latency_ms")
        top = _query_int(request, "top", 5, 1, MAX_PAGE)
        return JSONResponse(await self._call(views.best_under_budget, job_id, device, budget,
                                             top))

    async def api_trials(self, request: Request) -> Response:
        job_id = _path_int(request, "job")
        order = request.query_params.get("order")
        if order not in (None, "", "asc", "desc"):
            raise NasError(f"order must be asc or desc, got {order!r}")
        page = await self._call(
            views.trials_table, job_id, status=request.query_params.get("status") or None,
            sort=request.query_params.get("sort") or "score",
            descending=None if not order else order == "desc",
            limit=_query_int(request, "limit", 50, 1, MAX_PAGE),
            offset=_query_int(request, "offset", 0, 0, 2**62))
        return JSONResponse(page)

    async def api_failed(self, request: Request) -> Response:
        job_id = _path_int(request, "job")
        return JSONResponse(await self._call(views.failed_trials, job_id))

    # -- downloads --
    async def spec_download(self, request: Request) -> Response:
        job_id, number = _path_int(request, "job"), _path_int(request, "trial")
        data = await self._call(views.spec_json, job_id, number)
        return JSONResponse(data, headers=_attachment(f"job{job_id}-trial{number}.json"))

    async def onnx_download(self, request: Request) -> Response:
        job_id, number = _path_int(request, "job"), _path_int(request, "trial")
        folder = tempfile.TemporaryDirectory(prefix="nas-dashboard-")
        path = Path(folder.name) / f"job{job_id}-trial{number}.onnx"
        try:
            await self._call(views.export_onnx, job_id, number, path)
        except Exception:
            folder.cleanup()
            raise
        from starlette.background import BackgroundTask

        return FileResponse(path, media_type="application/octet-stream", filename=path.name,
                            background=BackgroundTask(folder.cleanup))

    # -- actions --
    async def action(self, request: Request) -> Response:
        if not self.allow_actions:
            return JSONResponse({"error": "this dashboard is read-only (start it with "
                                          "--allow-actions to cancel or resume jobs)"},
                                status_code=403)
        if ACTION_HEADER not in request.headers:
            return JSONResponse({"error": f"missing header {ACTION_HEADER}"}, status_code=403)
        job_id = _path_int(request, "job")
        what = request.path_params["action"]
        if what == "cancel":
            state = await self._call(lambda s, j: s.jobs.request_cancel(j), job_id)
        else:
            await self._call(_reopen, job_id)
            state = "pending"
        return JSONResponse({"job": job_id, "status": state})

    async def plotly(self, request: Request) -> Response:
        return Response(plotly_js(), media_type="text/javascript",
                        headers={"cache-control": "public, max-age=86400"})


def _reopen(storage: Storage, job_id: int) -> None:
    """Resume as `nas resume` does with a `nas serve` running: back to `pending`, for a
    serve process to claim; no driver runs inside the web server."""
    from .. import api

    api.reopen(storage, job_id)


def _picture(space: str, arch: dict[str, Any], space_args: dict[str, Any]) -> str:
    """The architecture as inline SVG (`nas.pictures` escapes every text and never raises:
    a space it cannot draw becomes a table of its decisions)."""
    from ..pictures import architecture_svg

    return architecture_svg(space, arch, space_args)


def _json_text(parts: dict[str, str]) -> str:
    """A JSON object from members already encoded (plotly figures: plotly's encoder)."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in parts.items()) + "}"


def _attachment(name: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{name}"'}


class NotFound(NasError):
    """A job or trial that does not exist: a 404 page."""


def _path_int(request: Request, name: str) -> int:
    value = request.path_params[name]
    if not 1 <= value <= 2**31 - 1:
        raise NotFound(f"no {name} {value}")
    return value


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise NasError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise NasError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _query_float(request: Request, name: str) -> float | None:
    text = request.query_params.get(name)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise NasError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise NasError(f"{name} must be a finite number, got {text!r}")
    return value


def _import_figure_libraries() -> None:
    """Import numpy and plotly's figure classes (lazily loaded on first attribute access) in
    the main thread before serving, so no request thread ever sees them half imported."""
    import numpy  # noqa: F401
    import plotly.graph_objects as go

    for name in ("Figure", "Scatter", "Bar", "Parcoords"):
        getattr(go, name)


def create_app(storage: Storage, *, allow_actions: bool = False, token: str | None = None,
               allowed_hosts: list[str] | None = None) -> Starlette:
    """The dashboard over `storage`. `allowed_hosts`: the Host headers accepted (bound to
    localhost, only local names: a web page elsewhere cannot reach it by DNS rebinding)."""
    _import_figure_libraries()
    board = Dashboard(storage, allow_actions)
    routes = [
        Route("/", board.jobs_page),
        Route("/jobs/{job:int}", board.job_page),
        Route("/jobs/{job:int}/trials/{trial:int}", board.trial_page),
        Route("/jobs/{job:int}/trials/{trial:int}/spec.json", board.spec_download),
        Route("/jobs/{job:int}/trials/{trial:int}/model.onnx", board.onnx_download),
        Route("/api/jobs", board.api_jobs),
        Route("/api/jobs/{job:int}", board.api_job),
        Route("/api/jobs/{job:int}/charts/{kind:str}", board.api_chart),
        Route("/api/jobs/{job:int}/pareto", board.api_pareto),
        Route("/api/jobs/{job:int}/best", board.api_best),
        Route("/api/jobs/{job:int}/trials", board.api_trials),
        Route("/api/jobs/{job:int}/failed", board.api_failed),
        Route("/api/jobs/{job:int}/{action:str}", board.action, methods=["POST"]),
        Route("/static/plotly.min.js", board.plotly),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def user_error(request: Request, exc: Exception) -> Response:
        message = str(exc)
        if isinstance(exc, NotFound) or message.startswith("no job ") or " has no trial " \
                in message:
            return board.not_found(request, message)
        status = 409 if isinstance(exc, LeaseHeldError) else 400
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"error": message}, status_code=status)
        return board.page("error.html", status_code=status, title="error", message=message)

    async def missing(request: Request, exc: Exception) -> Response:
        return board.not_found(request, f"nothing at {request.url.path}")

    middleware = [Middleware(SecurityHeaders)]
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    if token:
        middleware.append(Middleware(TokenMiddleware, token=token))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={NasError: user_error, 404: missing})
    app.state.dashboard = board
    return app
