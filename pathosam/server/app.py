"""The FastAPI application: SAM-API routes, request-size limit and JSON errors.

Every route is served under ``/sam/`` with **and** without its trailing slash (no 307 redirect:
up to v0.7 the extension's prompt client did not follow redirects), and also at the root
(``/``, ``/weights/``, ...) so that a server URL entered without ``/sam/`` works too (a common
user error, samapi#2, qupath-extension-sam#4/#13/#15).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from .. import __version__, registry
from .automask import automask_features
from .config import ServerConfig
from .engine import Engine, parse_prompt
from .errors import RequestError
from .weights import ModelSource, WeightsEntry, WeightsStore, registry_type, sam_type
from .wire import ModelType, SAMAutoMaskBody, SAMBody, SAMWeightsBody

__all__ = ["BodyLimit", "create_app", "load_served", "served_sources"]

log = logging.getLogger("pathosam.server")
PREFIXES = ("/sam", "")


class _TooLarge(BaseException):
    """Raised from ``receive`` when the body exceeds the limit (a BaseException so that no
    handler in between turns it into another error)."""


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get ``413 {"detail": ...}``.

    A declared ``Content-Length`` over the limit is answered before the app runs; a streamed body
    is counted as the app reads it. The rest of the body is read and discarded (up to
    ``max_bytes`` more) so that the client can read the answer instead of a reset connection.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _reject(self, receive, send, already: int) -> None:
        budget, more = self.max_bytes + already, True
        while more and budget > 0:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            budget -= len(msg.get("body", b""))
            more = msg.get("more_body", False)
        mb = self.max_bytes / (1 << 20)
        resp = JSONResponse({"detail": f"request body larger than {mb:g} MiB (see --max-request-mb)"}, 413,
                            headers={"Connection": "close"} if more else None)
        await resp({"type": "http"}, receive, send)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(receive, send, 0)
                    return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(receive, send, received)


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
            if spec.model.endswith("decoder"):
                raise ValueError(f"{spec.model!r} is a decoder; give the SAM model (e.g. vit_b_histopathology)")
            if not registry.path(spec.model).is_file() and not (config.allow_downloads and not registry.offline()):
                raise registry.ModelNotAvailableError(
                    f"model {spec.model!r} is not in the cache ({registry.path(spec.model)}); run "
                    f"'pathosam models fetch {spec.model}' first, or start the server with --allow-downloads")
            source = ModelSource("registry", spec.model, decoder or registry.get(spec.model).decoder)
            name, url, type_ = spec.model, registry.get(spec.model).url, registry_type(spec.model)
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
    from their encoder width, and leave the default model loaded (it is loaded last)."""
    typed = []
    for entry, source in store.served[::-1]:
        model = engine.model(source)
        width = int(model.sam.state_dict()["image_encoder.patch_embed.proj.weight"].shape[0])
        type_ = entry.type or sam_type(width)
        typed.append((WeightsEntry(type_, entry.name, entry.url), source))
        log.info("serving %s as %s (automask: %s): %s", entry.name, type_,
                 "AIS" if model.decoder is not None else "AMG", entry.url)
    store.served = typed[::-1]


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """Build the app: load the start-up models (see :func:`served_sources`) and add the routes.

    Parameters
    ----------
    config : ServerConfig, optional
        Settings; default: ``vit_b_histopathology`` from the cache, CPU/GPU auto.

    Returns
    -------
    FastAPI
        ``app.state.engine`` / ``app.state.store`` hold the engine and the weights store.
    """
    config = config or ServerConfig()
    weights_dir = Path(config.weights_dir) if config.weights_dir else registry.cache_dir() / "server"
    store = WeightsStore(served_sources(config), weights_dir, config.allow_downloads, config.allow_remote_weights)
    engine = Engine(store, config.device, config.embedding_cache, config.max_loaded_models, config.max_image_pixels)
    load_served(store, engine)

    app = FastAPI(title="pathosam SAM-API compatible server", version=__version__)
    app.router.redirect_slashes = False
    app.state.engine, app.state.store, app.state.config = engine, store, config
    app.add_middleware(BodyLimit, max_bytes=int(config.max_request_mb * (1 << 20)))

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse({"detail": exc.detail}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = [{k: v for k, v in e.items() if k not in ("input", "url")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, 422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal server error: {type(exc).__name__}: {exc}"}, 500)

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

    def sam(body: SAMBody) -> JSONResponse:
        """``POST /sam/``: prompted segmentation -> 1 or 3 Features."""
        prompt = parse_prompt(body.bbox, body.point_coords, body.point_labels)
        source = store.resolve(body.checkpoint_url, body.type.value)
        return JSONResponse(engine.prompt(source, body.b64img, prompt, body.multimask_output, body.type.value))

    def automask(body: SAMAutoMaskBody) -> JSONResponse:
        """``POST /sam/automask/``: every object of the image (AIS with a decoder, else AMG)."""
        source = store.resolve(body.checkpoint_url, body.type.value)
        return JSONResponse(engine.automask(
            source, body.b64img, lambda e, m, s, b: automask_features(e, m, s, b, body)))

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
