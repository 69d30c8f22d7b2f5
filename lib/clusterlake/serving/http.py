"""``clusterlake serve --model PATH``: a small JSON-over-HTTP service on Starlette + uvicorn.

Endpoints (JSON in and out; errors are ``{"error": message, ...}`` with a 4xx status, never a
500 for anything a client sends):

* ``POST /assign`` ``{"rows": [{feature: value, ...}, ...]}`` (or ``{"row": {...}}``, or rows as
  arrays in the model's feature order) -> ``{"run_id", "assignments": [{cluster_id, distance,
  second_cluster_id, margin, is_outlier[, density_label][, probability, log_likelihood]}]}``; a
  Gaussian mixture model adds each row's ``probability`` and ``log_likelihood``, and with
  ``"posterior": true`` in the body, ``posterior``: {cluster id: probability} of every component
* ``POST /nearest`` ``{"row": {...}, "n": 5}`` -> ``{"run_id", "clusters": [{cluster_id, distance}]}``
  (``"rows"`` gives one list per row)
* ``POST /similar`` ``{"row": {...}, "n": 10[, "cluster_id": 3]}`` -> the nearest member rows
* ``GET /clusters`` and ``GET /clusters/{id}`` -> cluster statistics (404 for an unknown id)
* ``GET /health`` -> ``{"status": "ok", "run_id", "k", "features", "loaded_at", ...}``

Limits: a request body over ``max_body_bytes`` gets 413 (checked on Content-Length and while the
body streams in), more than ``max_rows`` rows 413. A client that disconnects before its body is
complete is logged as one INFO line (no traceback: not a server error).

Reloading without downtime: the service holds one loaded model and swaps the reference when a new
one is fully loaded; requests already running finish on the model they started with, and a model
that fails to load is logged and reported by ``/health`` while the old one keeps serving. A reload
happens on ``SIGHUP`` (``kill -HUP <pid>``) and, with ``--watch SECONDS``, whenever
``model/latest`` names a new run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from clusterlake.errors import ClusterlakeError
from clusterlake.serving.assigner import RowError
from clusterlake.serving.query import ClusterCatalog, ClusterNotFound, load_catalog, model_run_id

log = logging.getLogger("clusterlake.serve")

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: about 2,000 rows of 64 features as JSON objects
DEFAULT_MAX_ROWS = 10_000
_THREAD_ROWS = 64  # bigger requests run in a worker thread, not on the event loop (~0.5 ms and up)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class ClientGone(Exception):
    """The client closed the connection before its request body was complete (not our error)."""

    def __init__(self, received: int, expected: Optional[str]):
        super().__init__(f"{received} of {expected} bytes" if expected else f"{received} bytes")
        self.received, self.expected = received, expected


@dataclass
class Loaded:
    catalog: ClusterCatalog
    loaded_at: float

    @property
    def run_id(self) -> str:
        return self.catalog.run_id


class ModelHolder:
    """The model being served, swapped whole on reload (an attribute assignment: atomic)."""

    def __init__(self, path: str, outlier_rule: str = "auto"):
        self.path = path
        self.outlier_rule = outlier_rule
        self.current = self._load()
        self.reloads = 0
        self.last_error: Optional[str] = None
        self._failed_run: Optional[str] = None  # --watch does not retry a run that failed to load
        self._lock = threading.Lock()  # one reload at a time

    def _load(self) -> Loaded:
        t0 = time.time()
        cat = load_catalog(self.path, outlier_rule=self.outlier_rule)
        if cat.assigner is None:
            log.info("loaded the near-duplicate index of grouping-only run %s from %s (%d rows) in %.2f s",
                     cat.run_id, cat.model_dir.uri, cat.duplicates.size, time.time() - t0)
        else:
            log.info("loaded model %s from %s (k=%d, %d features, outliers by %s) in %.2f s", cat.run_id,
                     cat.model_dir.uri, cat.assigner.k, len(cat.assigner.feature_names),
                     cat.assigner.outlier_rule, time.time() - t0)
        return Loaded(cat, time.time())

    def reload(self, force: bool = False) -> bool:
        """Load the model ``path`` names now if it is a new run (or ``force``); True if swapped.
        On failure the current model stays and the error is kept for ``/health``."""
        if not self._lock.acquire(blocking=False):
            return False  # a reload is running; it reads the newest model anyway
        try:
            rid = model_run_id(self.path)
            if not force and rid is not None and rid == self.current.run_id:
                self.last_error = self._failed_run = None  # latest points at the served model again
                return False
            if not force and rid is not None and rid == self._failed_run:
                return False  # known bad: wait for a newer run or a SIGHUP
            try:
                new = self._load()
            except Exception as exc:  # noqa: BLE001 (keep serving the old model whatever went wrong)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._failed_run = rid
                log.error("reload of %s (run %s) failed, still serving %s: %s", self.path, rid,
                          self.current.run_id, self.last_error)
                return False
            old, self.current = self.current, new
            self.reloads += 1
            self.last_error = self._failed_run = None
            log.info("now serving %s (was %s)", new.run_id, old.run_id)
            return True
        finally:
            self._lock.release()


async def _body(request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise HTTPError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes; "
                                     "send fewer rows per request")
        except ValueError:
            raise HTTPError(400, "bad Content-Length header") from None
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"request body is over the limit of {limit} bytes; send fewer rows per request")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone(size, length) from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise HTTPError(400, "empty request body; send a JSON object such as {\"row\": {...}}")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "request body is nested too deeply") from None


def _rows(body: Any, max_rows: int) -> tuple[Any, bool]:
    """(rows, single) from ``{"row": ...}`` or ``{"rows": [...]}``."""
    if not isinstance(body, dict):
        raise HTTPError(400, f"expected a JSON object with \"row\" or \"rows\", got {type(body).__name__}")
    if "rows" in body:
        rows = body["rows"]
        if not isinstance(rows, list):
            raise HTTPError(400, f"\"rows\" must be a list of rows, got {type(rows).__name__}")
        if not rows:
            raise HTTPError(400, "\"rows\" is empty")
        if len(rows) > max_rows:
            raise HTTPError(413, f"{len(rows)} rows in one request, over the limit of {max_rows}; split the batch")
        return rows, False
    if "row" in body:
        row = body["row"]
        if not isinstance(row, (dict, list)):
            raise HTTPError(400, f"\"row\" must be an object of feature -> value (or a list in feature order), "
                                 f"got {type(row).__name__}")
        return ([row] if isinstance(row, list) else row), True
    raise HTTPError(400, "expected a JSON object with \"row\" (one row) or \"rows\" (a list)")


def _int(body: dict, key: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
    v = body.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise HTTPError(400, f"\"{key}\" must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise HTTPError(400, f"\"{key}\" must be between {lo} and {hi}, got {v}")
    return v


class _Endpoints:
    """The route handlers of one app: each reads ``holder.current`` once, so a request runs on one
    model even if a reload lands meanwhile."""

    def __init__(self, holder: ModelHolder, max_body_bytes: int, max_rows: int):
        self.holder, self.max_body_bytes, self.max_rows = holder, max_body_bytes, max_rows
        self.started = time.time()

    def routes(self) -> list:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/assign", self.assign, methods=["POST"]),
            Route("/nearest", self.nearest, methods=["POST"]),
            Route("/similar", self.similar, methods=["POST"]),
            Route("/clusters", self.clusters, methods=["GET"]),
            Route("/clusters/{cluster_id}", self.cluster, methods=["GET"]),
        ]

    async def health(self, request):
        holder, cur = self.holder, self.holder.current
        assigner = cur.catalog.assigner
        model = cur.catalog.health() if assigner is None else {
            "run_date": cur.catalog.artifact.run_date, "k": assigner.k, "features": assigner.feature_names,
            "outlier_rule": assigner.outlier_rule, "radius_stat": assigner.radius_stat}
        return JSONResponse({
            "status": "ok", "run_id": cur.run_id, **model,
            "model_path": holder.path, "model_dir": cur.catalog.model_dir.uri,
            "loaded_at": cur.loaded_at, "uptime_s": round(time.time() - self.started, 3), "reloads": holder.reloads,
            "last_reload_error": holder.last_error, "max_body_bytes": self.max_body_bytes, "max_rows": self.max_rows,
        })

    def _matrix(self, cat: ClusterCatalog, rows):
        if cat.assigner is None:
            raise cat._only()  # a grouping-only model: no clusters to assign to
        X = cat.assigner.matrix(rows)  # counted as rows: {"row": {f: [v1, v2, ...]}} is many rows too
        if len(X) > self.max_rows:
            raise HTTPError(413, f"{len(X)} rows in one request, over the limit of {self.max_rows}; split the batch")
        return X

    async def _request(self, request) -> tuple[Any, Any, bool, ClusterCatalog]:
        """(body, rows, single, the model now served) of a POST."""
        body = await _body(request, self.max_body_bytes)
        rows, single = _rows(body, self.max_rows)
        return body, rows, single, self.holder.current.catalog

    async def assign(self, request):
        body, rows, _, cat = await self._request(request)
        X = self._matrix(cat, rows)
        post = body.get("posterior", False)
        if not isinstance(post, bool):
            raise HTTPError(400, f"\"posterior\" must be true or false, got {post!r}")
        a = cat.assigner

        def run():
            return a.assign(X, posterior=post).records(a.cluster_ids)

        res = await run_in_threadpool(run) if len(X) > _THREAD_ROWS else run()
        return JSONResponse({"run_id": cat.run_id, "assignments": res})

    async def nearest(self, request):
        body, rows, single, cat = await self._request(request)
        if cat.assigner is None:
            raise cat._only()
        n = _int(body, "n", min(5, cat.assigner.k), 1, cat.assigner.k)
        X = self._matrix(cat, rows)
        got = await run_in_threadpool(cat.nearest, X, n) if len(X) > _THREAD_ROWS else cat.nearest(X, n)
        return JSONResponse({"run_id": cat.run_id, **({"clusters": got[0]} if single and len(X) == 1 else {"rows": got})})

    async def similar(self, request):
        body, rows, single, cat = await self._request(request)
        if not single:
            raise HTTPError(400, "/similar takes one row: {\"row\": {...}, \"n\": 10}")
        n = _int(body, "n", 10, 1, 1000)
        if cat.near_duplicate_column(rows) is not None or cat.assigner is None:  # {"row": {"tokens": [...]}}
            got = await run_in_threadpool(cat.similar, rows, n, body.get("cluster_id"))
            return JSONResponse({"run_id": cat.run_id, **got})
        cid = _int(body, "cluster_id", None, -(1 << 31), (1 << 31) - 1)
        X = self._matrix(cat, rows)
        got = await run_in_threadpool(cat.similar, X, n, cid)  # may read a parquet file
        return JSONResponse({"run_id": cat.run_id, **got})

    async def clusters(self, request):
        cat = self.holder.current.catalog
        if cat.assigner is None:
            raise cat._only()
        return JSONResponse({"run_id": cat.run_id, "clusters": cat.clusters()})

    async def cluster(self, request):
        raw = request.path_params["cluster_id"]
        try:
            cid = int(raw)
        except ValueError:
            raise HTTPError(400, f"cluster id must be an integer, got {raw!r}") from None
        cat = self.holder.current.catalog
        if cat.assigner is None:
            raise cat._only()
        return JSONResponse(cat.cluster(cid))


# ----------------------------------------------------------------------------------------------
# errors: what each exception becomes (never a 500 for anything a client sends)


async def _on_http_error(request, exc: HTTPError):
    return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)


async def _on_row_error(request, exc: RowError):
    extra = {k: v for k, v in (("row", exc.row), ("feature", exc.feature)) if v is not None}
    return JSONResponse({"error": str(exc), **extra}, status_code=400)


async def _on_not_found(request, exc: ClusterNotFound):
    return JSONResponse({"error": str(exc)}, status_code=404)


async def _on_user_error(request, exc: ClusterlakeError):
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _on_client_gone(request, exc: Exception):  # nobody to answer: one line, no traceback
    who = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
    got = f"{exc}, " if str(exc) else ""  # ClientGone says how much came; starlette's ClientDisconnect not
    log.info("client %s disconnected before the request body was complete (%s%s %s); nothing to answer",
             who, got, request.method, request.url.path)
    return Response(status_code=400)


async def _on_bug(request, exc: Exception):  # a bug, not the client: logged with its traceback
    log.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the service log"},
                        status_code=500)


async def _on_starlette(request, exc):
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _exception_handlers() -> dict:
    return {
        HTTPError: _on_http_error, ClientGone: _on_client_gone, ClientDisconnect: _on_client_gone,
        RowError: _on_row_error, ClusterNotFound: _on_not_found, ClusterlakeError: _on_user_error,
        StarletteHTTPException: _on_starlette, Exception: _on_bug,
    }


# ----------------------------------------------------------------------------------------------
# reloading: SIGHUP and --watch


def _lifespan(holder: ModelHolder, watch_seconds: Optional[float]):
    """The app's lifespan: reload on SIGHUP (main thread only) and every ``watch_seconds``."""

    async def watch():
        while True:
            await asyncio.sleep(watch_seconds)
            await run_in_threadpool(holder.reload)

    @asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        tasks = []

        def on_hup():
            tasks[:] = [t for t in tasks if not t.done()]
            tasks.append(loop.create_task(run_in_threadpool(holder.reload, True)))

        try:  # SIGHUP -> reload (only possible in the main thread, i.e. `clusterlake serve`)
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        except (ValueError, RuntimeError, NotImplementedError):
            log.debug("SIGHUP reload not available here (not the main thread)")
        if watch_seconds:
            tasks.append(loop.create_task(watch()))
        yield
        for t in tasks:
            t.cancel()

    return lifespan


def create_app(model_path: str, *, outlier_rule: str = "auto", max_body_bytes: int = DEFAULT_MAX_BODY,
               max_rows: int = DEFAULT_MAX_ROWS, watch_seconds: Optional[float] = None,
               holder: Optional[ModelHolder] = None):
    """The ASGI app. Loads the model now (a bad path fails here, before the server listens)."""
    holder = holder or ModelHolder(model_path, outlier_rule)
    endpoints = _Endpoints(holder, max_body_bytes, max_rows)
    app = Starlette(routes=endpoints.routes(), lifespan=_lifespan(holder, watch_seconds),
                    exception_handlers=_exception_handlers())
    app.state.holder = holder
    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8080, *, outlier_rule: str = "auto",
          max_body_bytes: int = DEFAULT_MAX_BODY, max_rows: int = DEFAULT_MAX_ROWS,
          watch_seconds: Optional[float] = None, log_level: str = "info") -> None:
    """Run the service in this process until SIGINT/SIGTERM (uvicorn, one worker)."""
    import uvicorn

    try:  # one BLAS thread: a request's small GEMV must not wait for a second, busy core
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
    except ImportError:  # pragma: no cover (scikit-learn brings threadpoolctl)
        log.warning("threadpoolctl missing: set OPENBLAS_NUM_THREADS=1 for steady latency")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a SIGHUP while the model loads must not kill us
    app = create_app(model_path, outlier_rule=outlier_rule, max_body_bytes=max_body_bytes, max_rows=max_rows,
                     watch_seconds=watch_seconds)
    log.info("serving %s on http://%s:%d (POST /assign /nearest /similar, GET /clusters/{id} /health)",
             app.state.holder.current.run_id, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False,
                timeout_keep_alive=30, limit_concurrency=1000)
