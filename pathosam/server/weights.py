"""Which weights the server offers, how a ``checkpoint_url`` maps to local files, registration.

SAM-API identifies weights by ``type`` + ``checkpoint_url`` and downloads any URL it is sent.
This server treats ``checkpoint_url`` as an opaque **key** and never needs the network:

* **Served models** (``--model``, allowed by the operator at start-up): a registry name lists
  under its registry URL (e.g. ``vit_b_histopathology`` under the ownCloud URL the QuPath
  extension's README gives), a file under its ``file://`` URI. A registry model without a
  download URL -- the embedded ``pathosam_small``, shipped inside the package and the server's
  default -- lists under ``pathosam://<name>`` (e.g. ``pathosam://pathosam_small``), a key that
  means the same model on every pathosam server whatever its install folder.
* **SAM types**: a model is listed under the type of its encoder width (768 ``vit_b``, 1024
  ``vit_l``, 1280 ``vit_h``); registry names carry it (``vit_l_histopathology``). Every other
  width is listed under ``vit_b``, the type QuPath users pick for PathoSAM: this includes
  ``pathosam_small`` (a ViT of width 96 with a 256 px input, not a SAM size) and small custom
  models. The type is only a listing key; the architecture always comes from the checkpoint.
* **Registered models** (``pathosam.registry``: PathoSAM and Meta SAM): their published URLs
  (including samapi's default ``vit_b``/``vit_l``/``vit_h`` URLs) resolve to the local cache;
  cached ones are listed too. A registered model that is not cached is downloaded (and
  hash-verified) only with ``--allow-downloads``; otherwise the request gets 503 naming the
  command that fetches it.
* **Anything else** (Zenodo, Google Drive, Hugging Face, ...) is refused with 403 unless the
  server runs with ``--allow-remote-weights`` (and ``PATHOSAM_OFFLINE`` is not set, which
  forbids all downloads); then it is downloaded into
  ``<weights_dir>/remote/<sha256(url)>.pt`` (cache keyed by a hash of the whole URL, fixing
  samapi's basename collisions such as two ownCloud ``.../download`` links) and read only with
  ``torch.load(weights_only=True)``.

``GET weights/?type=T`` lists the served models of type T, then cached registered ones, then
``POST weights/`` registrations of T. The architecture comes from the checkpoint, not from
``type``, so a type without weights of its own lists **every** offered model instead of ``[]``
(an empty list makes the extension throw a NullPointerException on "Run"); the extension's
default type ``vit_l`` thus works with a ViT-B PathoSAM server.

``POST weights/`` answers ``200 text/plain`` in every handled case, as samapi does, because the
extension shows a 200 body verbatim and replaces anything else by "Registration request failed":
samapi's four messages, plus "Refused to register ..." / "Cannot register ..." explaining a
refusal. Registrations are kept in ``<weights_dir>/registered.json``. Downloads report
``progress/`` and stop at ``weights/cancel/`` (checked every 256 KiB).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import registry
from .errors import RequestError
from .wire import ModelType

__all__ = ["Cancelled", "ModelSource", "Progress", "WeightsEntry", "WeightsStore", "registry_type", "registry_url",
           "sam_type"]

log = logging.getLogger("pathosam.server")
_CHUNK = 1 << 18
#: Largest remote weights file downloaded (SAM ViT-H is 2.4 GiB).
MAX_REMOTE_BYTES = 8 << 30
_WIDTH_TYPES = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def sam_type(width: int) -> str:
    """SAM-API type of an image encoder of ``width`` channels; other sizes are offered as vit_b."""
    return _WIDTH_TYPES.get(int(width), "vit_b")


def registry_type(name: str) -> str:
    """SAM-API type of a registry model (``vit_b_histopathology`` -> ``vit_b``); names without a
    SAM type (``pathosam_small``) are offered as ``vit_b``."""
    prefix = "_".join(name.split("_")[:2])
    return prefix if prefix in _WIDTH_TYPES.values() else "vit_b"


def registry_url(name: str) -> str:
    """The ``weights/`` URL of a registry model: its download URL, or ``pathosam://<name>`` for
    a model shipped in the package (no URL)."""
    return registry.get(name).url or f"pathosam://{name}"


def _norm(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from.

    ``kind``: ``"registry"`` (``sam`` = registry name), ``"file"`` (``sam`` = path allowed at
    start-up) or ``"remote"`` (``sam`` = the URL, downloaded to ``path``). ``decoder``: an
    absolute path of an instance-decoder file, or a registry decoder name. ``key`` identifies the
    model in the model and embedding caches.
    """

    kind: str
    sam: str
    decoder: str | None = None
    path: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.sam}+{self.decoder or ''}"


@dataclass(frozen=True)
class WeightsEntry:
    """One row of ``GET weights/``: ``{"type", "name", "url"}``."""

    type: str
    name: str
    url: str

    def as_json(self) -> dict:
        return {"type": self.type, "name": self.name, "url": self.url}


class Cancelled(Exception):
    """A download stopped by ``GET weights/cancel/``."""


class Progress:
    """Thread-safe state of ``GET progress/``: ``{"message": str | null, "percent": int}``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._message: str | None = None
        self._percent = -1
        self.cancel = threading.Event()

    def set(self, message: str | None, percent: int = -1) -> None:
        with self._lock:
            self._message, self._percent = message, int(percent)

    def reset(self) -> None:
        self.set(None, -1)

    def as_json(self) -> dict:
        with self._lock:
            return {"message": self._message, "percent": self._percent}


def download(url: str, target: Path, progress: Progress, label: str, max_bytes: int = MAX_REMOTE_BYTES,
             check: Callable[[Path], None] | None = None) -> Path:
    """Stream ``url`` to ``target`` (atomically), reporting to ``progress``.

    Parameters
    ----------
    url : str
        http(s) URL.
    target : Path
        Final file; written under a temporary name and renamed only when complete and checked.
    progress : Progress
        Receives ``"<MB done>M/<MB total>M [<s> s, <MB/s>MB/s] <label>"`` and the percentage;
        its ``cancel`` event stops the download (:class:`Cancelled`).
    label : str
        Shown after the numbers.
    max_bytes : int
        Larger downloads are stopped (OSError).
    check : callable, optional
        Called with the temporary file before the rename (e.g. hash verification); may raise.
    """
    from ..io.atomic import atomic_write

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done, t0 = 0, time.monotonic()
            progress.set(f"0.0M/{total / 1e6:.1f}M {label}" if total else f"0.0M {label}", 0 if total else -1)
            while True:
                if progress.cancel.is_set():
                    raise Cancelled(url)
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if done > max_bytes:
                    raise OSError(f"download larger than {max_bytes >> 20} MiB stopped")
                dt = max(time.monotonic() - t0, 1e-6)
                size = f"{done / 1e6:.1f}M/{total / 1e6:.1f}M" if total else f"{done / 1e6:.1f}M"
                progress.set(f"{size} [{dt:.0f} s, {done / 1e6 / dt:.1f}MB/s] {label}",
                             min(100, done * 100 // total) if total else -1)
        if check is not None:
            progress.set(f"verifying {label}", 100)
            check(tmp)
    return target


class WeightsStore:
    """The offered weights, ``checkpoint_url`` resolution, downloads and registration.

    Parameters
    ----------
    served : list of (WeightsEntry, ModelSource)
        Models allowed at start-up, the default first.
    weights_dir : Path
        Registrations file and remote downloads.
    allow_downloads, allow_remote_weights : bool
        See :class:`~pathosam.server.config.ServerConfig`.
    """

    def __init__(self, served: list[tuple[WeightsEntry, ModelSource]], weights_dir: Path,
                 allow_downloads: bool = False, allow_remote_weights: bool = False) -> None:
        if not served:
            raise ValueError("the server needs at least one model")
        self.served = list(served)
        self.weights_dir = Path(weights_dir)
        offline = registry.offline()  # PATHOSAM_OFFLINE=1 forbids every download
        self.allow_downloads = (allow_downloads or allow_remote_weights) and not offline
        self.allow_remote = allow_remote_weights and not offline
        self.progress = Progress()
        self._lock = threading.Lock()  # registrations list
        self._register_lock = threading.Lock()  # one registration at a time
        self.registered: list[WeightsEntry] = self._read_registered()
        self._allowed_files = {str(Path(s.sam).resolve()): s for _, s in self.served if s.kind == "file"}
        self._registry_urls = {_norm(registry_url(n)): n for n in registry.names()}

    # ------------------------------------------------------------------ persistence
    @property
    def _registered_file(self) -> Path:
        return self.weights_dir / "registered.json"

    def _read_registered(self) -> list[WeightsEntry]:
        try:
            rows = json.loads(self._registered_file.read_text())
            return [WeightsEntry(str(r["type"]), str(r["name"]), str(r["url"])) for r in rows]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError):
            return []  # an unreadable registrations file is ignored, not fatal

    def _write_registered(self) -> None:
        from ..io.atomic import atomic_write

        self.weights_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self._registered_file) as tmp:
            Path(tmp).write_text(json.dumps([e.as_json() for e in self.registered], indent=1))

    # ------------------------------------------------------------------ listing
    def _registry_sam_names(self) -> list[str]:
        return registry.sam_names()

    def _available(self, entry: WeightsEntry) -> bool:
        try:
            self.resolve_url(entry.url)
        except RequestError:
            return False
        return True

    def entries(self, type: str | None = None) -> list[WeightsEntry]:
        """``GET weights/`` rows for ``type`` (all types in enum order when None).

        Never empty for a given type: a type without weights of its own lists all offered models.
        """
        if type is None:
            rows: list[WeightsEntry] = []
            for t in ModelType:
                rows += [e for e in self._own_entries(t.value) if e.url not in {r.url for r in rows}]
            return rows
        rows = self._own_entries(type)
        return rows if rows else self.entries(None)

    def _own_entries(self, type: str) -> list[WeightsEntry]:
        rows = [e for e, _ in self.served if e.type == type]
        urls = {_norm(e.url) for e in rows}
        for name in self._registry_sam_names():
            url = registry_url(name)
            if registry_type(name) != type or _norm(url) in urls:
                continue
            if registry.path(name).is_file() or (self.allow_downloads and not registry.get(name).bundled):
                rows.append(WeightsEntry(type, name, url))
                urls.add(_norm(url))
        with self._lock:
            registered = [e for e in self.registered if e.type == type]
        seen = {(e.name, _norm(e.url)) for e in rows}
        rows += [e for e in registered if (e.name, _norm(e.url)) not in seen and self._available(e)]
        return rows

    # ------------------------------------------------------------------ resolution
    def resolve(self, checkpoint_url: str | None, type: str) -> ModelSource:
        """The model a request means: ``checkpoint_url`` as a key, null = the type's first entry.

        Raises
        ------
        RequestError
            400 (not a SAM URL), 403 (not allowed), 503 (registered but not cached).
        """
        if checkpoint_url is None or not checkpoint_url.strip():
            checkpoint_url = self.entries(type)[0].url
        return self.resolve_url(checkpoint_url)

    def resolve_url(self, url: str) -> ModelSource:
        """Map a weights URL to a :class:`ModelSource` (see the module docstring)."""
        key = _norm(url)
        for entry, source in self.served:
            if _norm(entry.url) == key:
                return source
        name = self._registry_urls.get(key)
        if name is not None:
            if registry.is_decoder(name):
                raise RequestError(400, f"{url} is the registered decoder {name!r}, not SAM weights")
            if not (registry.path(name).is_file() or self.allow_downloads):
                raise RequestError(
                    503, f"the registered model {name!r} ({url}) is not in this server's cache and downloads "
                    f"are disabled; on the server run 'pathosam models fetch {name}' (or start it with "
                    f"--allow-downloads)")
            return ModelSource("registry", name, registry.get(name).decoder)
        try:
            parsed = urllib.parse.urlsplit(url.strip())
        except ValueError as err:  # e.g. an unclosed IPv6 bracket
            raise RequestError(400, f"checkpoint_url is not a valid URL: {err}") from None
        if parsed.scheme == "file":
            try:
                path = str(Path(urllib.request.url2pathname(parsed.path)).resolve())
            except (ValueError, OSError) as err:  # NUL from %00, undecodable names, ...
                raise RequestError(400, f"checkpoint_url {url!r} is not a usable file URL ({err})") from None
            source = self._allowed_files.get(path)
            if source is None:
                raise RequestError(403, f"{url}: this server loads only the files allowed at start-up "
                                        "(pathosam serve --model FILE)")
            return source
        if parsed.scheme in ("http", "https") and parsed.netloc:
            if not self.allow_remote:
                raise RequestError(
                    403, f"{url} is not one of this server's weights; it loads only registered PathoSAM/SAM "
                    "models and files allowed at start-up (start it with --allow-remote-weights to allow "
                    "downloads from any URL)")
            digest = hashlib.sha256(url.strip().encode("utf-8", "surrogatepass")).hexdigest()[:32]
            return ModelSource("remote", url.strip(), None, str(self.weights_dir / "remote" / f"{digest}.pt"))
        raise RequestError(400, f"checkpoint_url {url!r} is not an http(s) or file URL known to this server")

    # ------------------------------------------------------------------ local files
    def local_files(self, source: ModelSource) -> tuple[Path, Path | None]:
        """``(weights file, decoder file or None)`` of ``source``, downloading what is allowed.

        Raises
        ------
        RequestError
            503 when a file is missing and may not be downloaded or the download fails.
        """
        if source.kind == "file":
            return Path(source.sam), Path(source.decoder) if source.decoder else None
        if source.kind == "remote":
            path = Path(source.path)
            if not path.is_file():
                self._download_remote(source.sam, path, Path(source.path).name)
            return path, None
        sam = self._registry_file(source.sam, required=True)
        decoder = None
        if source.decoder:  # an operator's file (absolute path) or the registered decoder's name
            decoder = (Path(source.decoder) if Path(source.decoder).is_absolute()
                       else self._registry_file(source.decoder, required=False))
        return sam, decoder

    def _registry_file(self, name: str, required: bool) -> Path | None:
        path = registry.path(name)
        if path.is_file():
            return path
        if not self.allow_downloads:
            if required:
                raise RequestError(503, f"the registered model {name!r} is not in this server's cache; on the "
                                        f"server run 'pathosam models fetch {name}'")
            return None
        entry = registry.get(name)
        if not self._register_lock.locked():  # a download for a request: forget an old cancel
            self.progress.cancel.clear()
        try:
            download(entry.url, path, self.progress, name, check=lambda tmp: registry.verify_file(name, tmp))
        except Cancelled:
            problem = f"download of {name!r} was cancelled"
        except (OSError, registry.HashMismatchError) as err:
            problem = f"could not download {name!r} from {entry.url}: {err}"
        else:
            return path
        finally:
            self.progress.reset()
        if required:
            raise RequestError(503, problem)
        log.warning("%s; continuing without it", problem)
        return None

    def _download_remote(self, url: str, path: Path, label: str) -> None:
        if not self._register_lock.locked():
            self.progress.cancel.clear()
        try:
            download(url, path, self.progress, label, check=_check_weights)
        except Cancelled:
            raise RequestError(503, f"download of {url} was cancelled") from None
        except (OSError, ValueError, RuntimeError) as err:
            raise RequestError(503, f"could not use weights from {url}: {err}") from None
        finally:
            self.progress.reset()

    # ------------------------------------------------------------------ registration
    def register(self, type: str, name: str, url: str) -> str:
        """``POST weights/``: make ``url`` available under ``name`` for ``type``; the reply text."""
        url = url.strip()
        with self._register_lock:
            self.progress.cancel.clear()
            for e in self._own_entries(type):
                if e.name == name:
                    if _norm(e.url) == _norm(url):
                        return f"{name} ({url}) is registered."
                    return f"Model file with the name '{name}' already exists. Skip registration."
            with self._lock:
                if any(e.type == type and _norm(e.url) == _norm(url) for e in self.registered):
                    return f"Model file with the url '{url}' already exists. Skip registration."
            try:
                source = self.resolve_url(url)
            except RequestError as err:
                verb = "Refused to register" if err.status == 403 else "Cannot register"
                return f"{verb} {name} ({url}): {err.detail}"
            try:
                if source.kind == "registry":
                    self.progress.set(f"verifying {source.sam}", 0)
                    registry.verify_file(source.sam, self.local_files(source)[0])
                elif source.kind == "remote":
                    self.local_files(source)
            except RequestError as err:
                if self.progress.cancel.is_set():
                    return f"Cancelled to register {name} ({url})."
                return f"Cannot register {name} ({url}): {err.detail}"
            except registry.HashMismatchError as err:
                return f"Cannot register {name} ({url}): {err}"
            finally:
                self.progress.reset()
                self.progress.cancel.clear()
            with self._lock:
                self.registered.append(WeightsEntry(type, name, url))
                self._write_registered()
            return f"{name} ({url}) is registered."


def _check_weights(path: Path) -> None:
    """Refuse a downloaded file that is not SAM weights pathosam can read (weights_only load)."""
    from ..models.checkpoint import read_checkpoint

    ck = read_checkpoint(path)
    if ck.sam_state is None:
        raise ValueError(f"the file holds no SAM weights (layout {ck.layout})")
