"""HTTP server wire-compatible with SAM-API (ksugar/samapi v0.7.1) as the QuPath SAM extension
(qupath-extension-sam v0.9.1) uses it: ``pathosam serve``, then set the extension's server URL
to ``http://127.0.0.1:8000/sam/``.

Endpoints (each also without its trailing slash, and also at the root, see :mod:`.app`):

======  =========================  =======================================================
GET     ``/sam/version/``          pathosam version, text/plain
GET     ``/sam/weights/?type=T``   ``[{"type", "name", "url"}]``; never empty for a type
POST    ``/sam/weights/``          register ``{"type", "name", "url"}``; text/plain outcome
GET     ``/sam/progress/``         ``{"message": str | null, "percent": int}`` of a download
GET     ``/sam/weights/cancel/``   stop the download: ``Cancel signal sent``
POST    ``/sam/``                  prompt (box and/or points) -> 1 or 3 Features
POST    ``/sam/automask/``         all objects -> Features (AIS with a decoder, else AMG)
POST    ``/sam/sam3/``             503 (no SAM3); ``video/``, ``sam3video/`` 404; ``upload/`` 501
======  =========================  =======================================================

Modules: :mod:`.wire` (request bodies), :mod:`.images` (``b64img`` decoding),
:mod:`.geometry` (mask -> Feature), :mod:`.weights` (offered weights, ``checkpoint_url``
resolution, registration, progress/cancel), :mod:`.engine` (models, embedding cache,
inference), :mod:`.jobs` (the model lock, prompt priority, time limits, cancellation),
:mod:`.automask`, :mod:`.limits` (body size and time), :mod:`.app` (routes, errors),
:mod:`.config`.

Models: ``pathosam serve`` without ``--model`` serves the embedded model ``pathosam_small``
(shipped in the package, so it works offline at once). It is listed under SAM type ``vit_b``
with the URL ``pathosam://pathosam_small``: it is a ViT of width 96 with a 256 px input, not a
SAM size, and ``vit_b`` is the type QuPath users pick for PathoSAM (every non-SAM width is
listed as ``vit_b``; the type is only a listing key, the architecture comes from the
checkpoint). It is also offered by servers started with other models, after them. Registry
models list under their name's type (``vit_l_histopathology`` -> ``vit_l``), files under their
encoder width's (:mod:`.weights`).

Availability: one model copy, one computation at a time, but a prompt never waits for a whole
automask: prompts go first, and an automask runs tile by tile (AIS) or point batch by point
batch (AMG), handing the model to waiting prompts in between (:mod:`.jobs`). An automask that
runs past ``--max-request-seconds`` (default 300) stops and is answered 503 with a message
naming the flag; one whose client disconnects stops at the next tile. A request body must
arrive within ``--body-timeout`` seconds (default 60), else 408 and the connection is closed
(a declared ``Content-Length`` with no body no longer holds a connection forever).

samapi behaviour **replicated** (the extension depends on it or cannot tell):

* routes under ``/sam/``; lenient JSON (unknown fields ignored, optional fields null, floats
  truncated to ints); 422 ``{"detail": [...]}`` for an unknown ``type`` or a missing ``b64img``;
* compact JSON arrays of ``{"type": "Feature", "geometry", "properties"}`` with
  ``properties = {object_idx, label: "object", quality, sam_model}``, ``object_idx`` starting
  at -1, ``sam_model`` echoing ``type``;
* geometry: the longest marching-squares contour, half-pixel vertices with pixel centres at
  integers (outlines land 0.5 px up-left in QuPath, as with samapi), one closed ring, holes and
  smaller parts dropped (:mod:`.geometry`);
* ``POST weights/`` answers 200 text/plain with samapi's messages; ``progress/`` / ``cancel/``.

samapi behaviour **fixed** (wire-compatible; the extension parses the same shapes):

* ``quality`` is each mask's own predicted IoU (samapi rotates the three multimask scores);
* grayscale, palette, RGBA, 16-bit images are converted to RGB (samapi: 500 or a broken mask);
* bad input is a 4xx JSON error, never a 500 and never a dead worker: malformed JSON, wrong
  types, integers outside 32 bits, NaN / Infinity, lone surrogates, control characters in URLs
  or names (422), bad base64 / not an image / too many pixels / empty prompt / point or box
  outside the image / label not 0 or 1 / a ``checkpoint_url`` that is no usable URL (e.g. a
  ``file:`` URL with ``%00``) (400), body over ``--max-request-mb`` (413), body not sent within
  ``--body-timeout`` (408) (``tests/test_server_fuzz.py`` fuzzes every route for this); 503 =
  a limit or capacity (time limit, out of memory, weights not available); a 500 is a bug and is
  logged with its traceback;
* no redirect for a missing trailing slash (served directly; samapi: 307);
* an empty mask gives no Feature (samapi emits an empty Polygon that QuPath turns into an
  empty annotation, and "Multi-mask (smallest)" then picks it);
* ``checkpoint_url`` is a key resolved offline to the registry cache or operator-allowed files;
  arbitrary URLs are refused (403) unless ``--allow-remote-weights``; remote files are cached
  by a hash of the whole URL (samapi: by basename, so ``.../download`` links collide);
* ``weights/?type=T`` lists all offered models when T has none (samapi: ``[]`` -> NPE);
* embeddings of several images and models are cached (samapi: only the last image string);
* samapi's invalid default ``output_type`` ``"Single Mask"`` is accepted as ``"Single mask"``;
* inference is serialised in one process with one model copy, prompts before automask (samapi
  needs ``--workers 2``, i.e. two model copies, to answer ``progress/`` during a download, and
  has no time limit: a point prompt could wait minutes behind an automask).

Not supported: SAM2/SAM3/MobileSAM weights and the video modes; ``b64mask`` is ignored (samapi
passes it raw to SAM, where it cannot work); ``crop_n_layers`` > 0.
"""

from __future__ import annotations

__all__ = ["ServedModel", "ServerConfig", "create_app", "serve"]


def __getattr__(name: str):
    if name in ("ServedModel", "ServerConfig"):
        from . import config

        return getattr(config, name)
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'pathosam.server' has no attribute {name!r}")


class _QuietPolling:
    """Logging filter: drop access-log lines of ``progress/`` polls (every 100 ms from QuPath)."""

    def filter(self, record) -> bool:
        msg = record.getMessage()
        return "/progress" not in msg and "/weights/cancel" not in msg


def serve(config, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Load the models of ``config`` and serve until interrupted (uvicorn, one process).

    Parameters
    ----------
    config : ServerConfig
        Models and limits.
    host : str
        Interface to bind; ``127.0.0.1`` keeps the server local (it has no authentication).
    port : int
        TCP port.
    log_level : str
        uvicorn log level.
    """
    import logging

    import uvicorn

    from .app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(message)s")
    logging.getLogger("uvicorn.access").addFilter(_QuietPolling())
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, timeout_keep_alive=30)
