"""The FastAPI application: SAM-API routes, request limits, scheduling and JSON errors.

Every route is served under ``/sam/`` with **and** without its trailing slash (no 307 redirect:
up to v0.7 the extension's prompt client did not follow redirects), and also at the root
(``/``, ``/weights/``, ...) so that a server URL entered without ``/sam/`` works too (a common
user error, samapi#2, qupath-extension-sam#4/#13/#15).

Errors are JSON ``{"detail": ...}``: 4xx for anything a client sent (see
:mod:`pathosam.server`), 503 for limits and capacity (time limit, out of memory, weights not
available). An exception nobody expected is a bug: it is logged with its traceback and answered
500 -- the request tests fuzz every route so that no malformed request ever gets there.

Model work runs in worker threads (:mod:`pathosam.server.jobs`); while it runs, the request's
connection is watched, and a client that disconnects stops its computation at the next chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from .. import __version__, registry
from .automask import automask_features
from .config import ServerConfig
from .engine import Engine, parse_prompt
from .errors import RequestError
from .jobs import ClientGone, Job
from .limits import BodyLimit
from .weights import ModelSource, WeightsEntry, WeightsStore, registry_type, registry_url, sam_type
from .wire import ModelType, SAMAutoMaskBody, SAMBody, SAMWeightsBody

__all__ = ["BodyLimit", "create_app", "load_served", "run_job", "served_sources"]

log = logging.getLogger("pathosam.server")
PREFIXES = ("/sam", "")
#: Seconds between checks whether a computing request's client is still connected.
WATCH_SECONDS = 0.1
T = TypeVar("T")


async def run_job(request: Request, job: Job, work: Callable[[], T]) -> T:
    """Run ``work`` in a worker thread; meanwhile poll the connection and set ``job.gone`` when
    the client disconnects (the work stops at its next :meth:`Job.check`)."""

    async def watch() -> None:
        while not job.gone.is_set():
            await anyio.sleep(WATCH_SECONDS)
            if await request.is_disconnected():
                job.gone.set()

    result: T | None = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            result = await anyio.to_thread.run_sync(work)
        except Exception as err:  # re-raised below, outside the task group
            error = err
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


def served_sources(config: ServerConfig) -> list[tuple[WeightsEntry, ModelSource]]:
    """Check the start-up models: their listing rows and sources, the default first.

    Registry models must be cached (or ``allow_downloads``); files must exist. A file's type is
    left empty here; :func:`load_served` fills it in from the encoder width.

    Raises
    ------
    FileNotFoundError, ValueError, registry.ModelNotAvailableError
        With a message for the operator.
    """
    rows: list[tuple[WeightsEntry, ModelSource]] = []
    names: set[str] = set()
    urls: set[str] = set()
    for spec in config.models:
        decoder = None
        if spec.decoder:
            dec = Path(spec.decoder).expanduser()
            if not dec.is_file():
                raise FileNotFoundError(f"decoder file not found: {spec.decoder}")
            decoder = str(dec.resolve())
        if registry.is_registered(spec.model) and not Path(spec.model).exists():
            if registry.is_decoder(spec.model):
                raise ValueError(f"{spec.model!r} is a decoder; give the SAM model (e.g. vit_b_histopathology)")
            if not registry.path(spec.model).is_file() and not (config.allow_downloads and not registry.offline()):
                raise registry.ModelNotAvailableError(
                    f"model {spec.model!r} is not in the cache ({registry.path(spec.model)}); run "
                    f"'pathosam models fetch {spec.model}' first, or start the server with --allow-downloads")
            source = ModelSource("registry", spec.model, decoder or registry.get(spec.model).decoder)
            name, url, type_ = spec.model, registry_url(spec.model), registry_type(spec.model)
        else:
            path = Path(spec.model).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"{spec.model!r} is neither a registered model name ({', '.join(registry.names())}) nor a file")
            path = path.resolve()
            source = ModelSource("file", str(path), decoder)
            name, url, type_ = path.stem, path.as_uri(), ""
        k = 2
        base_name, base_url = name, url
        while name in names or url in urls:
            name, url = f"{base_name}-{k}", f"{base_url}#{k}"
            k += 1
        names.add(name)
        urls.add(url)
        rows.append((WeightsEntry(type_, name, url), source))
    return rows


def load_served(store: WeightsStore, engine: Engine) -> None:
    """Load every start-up model once (errors surface before serving), set the types of files
    from their encoder width, and leave the default model loaded (it is loaded last).

    Raises
    ------
    ValueError
        A model that cannot be loaded (a bad checkpoint file), naming the file.
    """
    typed = []
    for entry, source in store.served[::-1]:
        try:
            model = engine.model(source)
        except RequestError as err:
            raise ValueError(err.detail.replace("\n", " ")) from None
        width = int(model.sam.state_dict()["image_encoder.patch_embed.proj.weight"].shape[0])
        type_ = entry.type or sam_type(width)
        typed.append((WeightsEntry(type_, entry.name, entry.url), source))
        log.info("serving %s as %s (ViT width %d, %d px input; automask: %s): %s", entry.name, type_, width,
                 model.img_size, "AIS" if model.decoder is not None else "AMG", entry.url)
    store.served = typed[::-1]


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """Build the app: load the start-up models (see :func:`served_sources`) and add the routes.

    Parameters
    ----------
    config : ServerConfig, optional
        Settings; default: the embedded model (``pathosam_small``), CPU/GPU auto.

    Returns
    -------
    FastAPI
        ``app.state.engine`` / ``app.state.store`` hold the engine and the weights store.
    """
    config = config or ServerConfig()
    weights_dir = Path(config.weights_dir) if config.weights_dir else registry.cache_dir() / "server"
    store = WeightsStore(served_sources(config), weights_dir, config.allow_downloads, config.allow_remote_weights)
    engine = Engine(store, config.device, config.embedding_cache, config.max_loaded_models, config.max_image_pixels,
                    precision=config.precision)
    load_served(store, engine)

    app = FastAPI(title="pathosam SAM-API compatible server", version=__version__)
    app.router.redirect_slashes = False
    app.state.engine, app.state.store, app.state.config = engine, store, config
    app.add_middleware(BodyLimit, max_bytes=int(config.max_request_mb * (1 << 20)),
                       body_timeout=config.body_timeout)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        if isinstance(exc, ClientGone):
            log.info("%s %s: %s", request.method, request.url.path, exc.detail)
        return _error(exc.status, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = [{k: (_plain(v) if k == "ctx" else v) for k, v in e.items() if k not in ("input", "url")}
                  for e in exc.errors()]
        return _error(422, jsonable_encoder(errors))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        if _out_of_memory(exc):  # capacity, not a bug: say so, keep serving
            log.warning("out of memory answering %s %s: %s", request.method, request.url.path, exc)
            return _error(503, "the server ran out of memory for this request; send a smaller image region")
        log.exception("internal error (a bug) answering %s %s", request.method, request.url.path)
        return _error(500, f"internal server error: {type(exc).__name__}: {exc}")

    def add(path: str, endpoint, methods: list[str]) -> None:
        done = set()
        for prefix in PREFIXES:
            full = prefix + path
            for p in (full, full.rstrip("/") or "/"):
                if p not in done:
                    done.add(p)
                    app.add_api_route(p, endpoint, methods=methods, include_in_schema=p == "/sam" + path)

    async def version() -> PlainTextResponse:
        """``GET version/``: the pathosam version (text/plain)."""
        return PlainTextResponse(__version__)

    async def list_weights(type: ModelType | None = None) -> JSONResponse:
        """``GET weights/?type=T``: ``[{"type", "name", "url"}, ...]``, never empty for a type."""
        return JSONResponse([e.as_json() for e in store.entries(type.value if type else None)])

    def register_weights(body: SAMWeightsBody) -> PlainTextResponse:
        """``POST weights/``: register ``url`` under ``name`` (text/plain outcome, always 200)."""
        return PlainTextResponse(store.register(body.type.value, body.name.strip(), body.url))

    async def cancel() -> PlainTextResponse:
        """``GET weights/cancel/``: stop the running download."""
        store.progress.cancel.set()
        return PlainTextResponse("Cancel signal sent")

    async def progress() -> JSONResponse:
        """``GET progress/``: ``{"message": str | null, "percent": int}`` (-1 when idle)."""
        return JSONResponse(store.progress.as_json())

    async def sam(body: SAMBody, request: Request) -> JSONResponse:
        """``POST /sam/``: prompted segmentation -> 1 or 3 Features (before any waiting automask)."""
        prompt = parse_prompt(body.bbox, body.point_coords, body.point_labels)
        source = store.resolve(body.checkpoint_url, body.type.value)
        job = Job("prompt", config.max_request_seconds)
        return JSONResponse(await run_job(request, job, lambda: engine.prompt(
            source, body.b64img, prompt, body.multimask_output, body.type.value, job)))

    async def automask(body: SAMAutoMaskBody, request: Request) -> JSONResponse:
        """``POST /sam/automask/``: every object of the image (AIS with a decoder, else AMG), in
        chunks that give way to prompts, within ``max_request_seconds``."""
        source = store.resolve(body.checkpoint_url, body.type.value)
        job = Job("automask", config.max_request_seconds)
        return JSONResponse(await run_job(request, job, lambda: engine.automask(
            source, body.b64img, lambda e, m, s, b, j: automask_features(e, m, s, b, body, j), job)))

    async def sam3() -> JSONResponse:
        return JSONResponse({"detail": "SAM3 is not available on this server (pathosam serves SAM/PathoSAM "
                                       "models; use the prompt or automask modes)."}, 503)

    async def video() -> JSONResponse:
        return JSONResponse({"detail": "Only SAM2 models are supported for video prediction; this pathosam "
                                       "server has none (use 2D prompts per plane)."}, 404)

    async def upload() -> JSONResponse:
        return JSONResponse({"detail": "upload/ is only used by the video modes, which this pathosam server "
                                       "does not support."}, 501)

    add("/version/", version, ["GET"])
    add("/weights/", list_weights, ["GET"])
    add("/weights/", register_weights, ["POST"])
    add("/weights/cancel/", cancel, ["GET"])
    add("/progress/", progress, ["GET"])
    add("/", sam, ["POST"])
    add("/automask/", automask, ["POST"])
    add("/sam3/", sam3, ["POST"])
    add("/video/", video, ["POST"])
    add("/sam3video/", video, ["POST"])
    add("/upload/", upload, ["POST"])
    return app


class _AsciiJSON(JSONResponse):
    """Compact JSON with non-ASCII escaped (text a client sent is never re-encoded)."""

    def render(self, content) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, detail) -> JSONResponse:
    """The ``{"detail": ...}`` answer of an error."""
    return _AsciiJSON({"detail": detail}, status)


def _plain(ctx):
    """Validation-error context with exceptions as text (JSON-serialisable)."""
    if isinstance(ctx, dict):
        return {k: (str(v) if isinstance(v, BaseException) else v) for k, v in ctx.items()}
    return ctx


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        return isinstance(exc, torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        return False
