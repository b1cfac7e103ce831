"""Server settings (what ``pathosam serve`` options set)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import registry
from .images import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["ServedModel", "ServerConfig"]


@dataclass(frozen=True)
class ServedModel:
    """One model the operator allows at start-up.

    ``model``: a registry name (``pathosam models list``) or a weights file in any reference
    layout; ``decoder``: a separate instance-decoder file (a registry model uses its registered
    decoder when that is cached).
    """

    model: str
    decoder: str | None = None


@dataclass
class ServerConfig:
    """Settings of the SAM-API compatible server.

    Attributes
    ----------
    models : list of ServedModel
        Offered models; the first is the default (first in every ``weights/`` listing). Default:
        the embedded model ``registry.DEFAULT_MODEL`` (``pathosam_small``, shipped in the package).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    precision : str
        Arithmetic of the served models: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (CUDA),
        ``"auto"`` (:mod:`pathosam.precision`).
    allow_downloads : bool
        Registered (hash-verified) models that are not cached may be downloaded on request.
    allow_remote_weights : bool
        Any http(s) ``checkpoint_url`` / ``weights/`` URL may be downloaded and loaded (read with
        ``torch.load(weights_only=True)`` only). Off by default: only registered models and the
        files above are ever loaded.
    max_request_mb : float
        Largest request body, MiB (413 above).
    max_image_pixels : int
        Largest decoded image, width x height (400 above).
    embedding_cache : int
        Image embeddings kept (LRU), keyed by SHA-256 of ``b64img`` + model.
    max_loaded_models : int
        Models held in memory at once (LRU); switching to another reloads from disk.
    max_request_seconds : float
        Time limit of one request's model work, from its arrival (waiting included); an automask
        over it stops between two chunks and is answered 503. 0 = none.
    body_timeout : float
        Seconds within which a request's whole body must arrive (408 after). 0 = none.
    weights_dir : Path or None
        Where registrations (``registered.json``) and remote downloads are kept; default
        ``<pathosam cache>/server``.
    """

    models: list[ServedModel] = field(default_factory=lambda: [ServedModel(registry.DEFAULT_MODEL)])
    device: str = "auto"
    precision: str = "fp32"
    allow_downloads: bool = False
    allow_remote_weights: bool = False
    max_request_mb: float = 64.0
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    embedding_cache: int = 4
    max_loaded_models: int = 1
    max_request_seconds: float = 300.0
    body_timeout: float = 60.0
    weights_dir: Path | None = None
