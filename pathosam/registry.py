"""The model registry: published PathoSAM / SAM weights, their URLs, hashes and local cache.

Files are cached under ``$PATHOSAM_CACHE_DIR`` (else the platform's user cache directory,
e.g. ``~/.cache/pathosam``) in ``models/<name>``, the registry name without extension, as
micro-sam does. Nothing is downloaded at import; :func:`fetch` downloads on explicit use,
verifies the hash and, when the download fails, says where to place the file by hand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_OWNCLOUD = "https://owncloud.gwdg.de/index.php/s/{}/download"
_META = "https://dl.fbaipublicfiles.com/segment_anything/{}"
#: xxh128 of the bundled small model (pathosam/weights/pathosam_small.pt; docs/models.md).
BUNDLED_HASH = "xxh128:d85fb357673f93c4cd7de8d88609df6e"
#: xxh128 of its bundled class head (pathosam/weights/pathosam_small_classes.pt; CoNSeP classes).
BUNDLED_CLASSES_HASH = "xxh128:a9de38cc757cbfe61932240ff516d725"


@dataclass(frozen=True)
class ModelEntry:
    """One registered file. ``hash`` is ``"xxh128:<hex>"`` or ``"sha256:<hex>"``."""

    name: str
    url: str
    hash: str
    description: str
    decoder: str | None = None
    semantic_decoder: str | None = None
    approx_size_mb: int | None = None
    bundled: str | None = None  # file inside the pathosam package (shipped, never downloaded)
    #: AIS post-processing recommended for this model, over the reference's defaults (an explicit
    #: parameter wins); e.g. a size filter for the small model.
    ais_defaults: tuple[tuple[str, float | str], ...] = ()
    #: Semantic decoders: the class scheme of their maps (:data:`pathosam.semantic.SCHEMES`).
    class_scheme: str | None = None


#: The model used when none is named: pathosam's own small model, shipped inside the package.
DEFAULT_MODEL = "pathosam_small"


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(DEFAULT_MODEL, "", BUNDLED_HASH,
                   "pathosam small model (ViT 96x4, 256 px input; SAM + AIS decoder with image skip), shipped with "
                   "the package, CPU-friendly; AIS with shape seeds, drops nuclei < 100 px; see docs/models.md",
                   approx_size_mb=12, bundled="weights/pathosam_small.pt",
                   ais_defaults=(("min_size", 100), ("seeds", "shape")),
                   semantic_decoder=f"{DEFAULT_MODEL}_classes"),
        ModelEntry(f"{DEFAULT_MODEL}_classes", "", BUNDLED_CLASSES_HASH,
                   "pathosam small model's class head: CoNSeP's 4 nucleus classes (other, inflammatory, "
                   "epithelial, spindle-shaped), shipped with the package; see docs/models.md",
                   approx_size_mb=2, bundled="weights/pathosam_small_classes.pt", class_scheme="consep"),
        ModelEntry("vit_b_histopathology", _OWNCLOUD.format("sBB4H8CTmIoBZsQ"),
                   "xxh128:ffd1a2cd84570458b257bd95fdd8f974", "PathoSAM ViT-B generalist (SAM weights)",
                   decoder="vit_b_histopathology_decoder",
                   semantic_decoder="vit_b_histopathology_semantic_decoder", approx_size_mb=375),
        ModelEntry("vit_l_histopathology", _OWNCLOUD.format("IZgnn1cpBq2PHod"),
                   "xxh128:b591833c89754271023e901281dee3f2", "PathoSAM ViT-L generalist (SAM weights)",
                   decoder="vit_l_histopathology_decoder", approx_size_mb=1250),
        ModelEntry("vit_h_histopathology", _OWNCLOUD.format("L7AcvVz7DoWJ2RZ"),
                   "xxh128:bd1856dafc156a43fb3aa705f1a6e92e", "PathoSAM ViT-H generalist (SAM weights)",
                   decoder="vit_h_histopathology_decoder", approx_size_mb=2560),
        ModelEntry("vit_b_histopathology_decoder", _OWNCLOUD.format("KO9AWqynI7SFOBj"),
                   "xxh128:6a66194dcb6e36199cbee2214ecf7213", "PathoSAM ViT-B instance (AIS) decoder",
                   approx_size_mb=44),
        ModelEntry("vit_l_histopathology_decoder", _OWNCLOUD.format("oIs6VSmkOp7XrKF"),
                   "xxh128:46aab7765d4400e039772d5a50b55c04", "PathoSAM ViT-L instance (AIS) decoder",
                   approx_size_mb=44),
        ModelEntry("vit_h_histopathology_decoder", _OWNCLOUD.format("1qAKxy5H0jgwZvM"),
                   "xxh128:3ed9f87e46ad5e16935bd8d722c8dc47", "PathoSAM ViT-H instance (AIS) decoder",
                   approx_size_mb=44),
        ModelEntry("vit_b_histopathology_semantic_decoder", _OWNCLOUD.format("TFbI25UZoixd1hi"),
                   "sha256:bdd05a55c72c02abce72a7aa6885c6ec21df9c43fda9cf3c5d11ef5788de0ab0",
                   "PathoSAM ViT-B semantic decoder (PanNuke classes)", approx_size_mb=44, class_scheme="pannuke"),
        ModelEntry("vit_b", _META.format("sam_vit_b_01ec64.pth"), "xxh128:6923c33df3637b6a922d7682bfc9a86b",
                   "Segment Anything ViT-B (Meta)", approx_size_mb=375),
        ModelEntry("vit_l", _META.format("sam_vit_l_0b3195.pth"), "xxh128:a82beb3c660661e3dd38d999cc860e9a",
                   "Segment Anything ViT-L (Meta)", approx_size_mb=1250),
        ModelEntry("vit_h", _META.format("sam_vit_h_4b8939.pth"), "xxh128:97698fac30bd929c2e6d8d8cc15933c2",
                   "Segment Anything ViT-H (Meta)", approx_size_mb=2560),
    ]
}


class ModelNotAvailableError(RuntimeError):
    """A registered file is not in the cache and could not be downloaded."""


class HashMismatchError(ValueError):
    """A file's content does not match its registered hash."""


def names() -> list[str]:
    return list(MODELS)


def is_registered(name: str) -> bool:
    return name in MODELS


def is_decoder(name: str) -> bool:
    """Whether registry entry ``name`` is a decoder file (an instance or semantic decoder named by
    another entry, e.g. ``vit_b_histopathology_decoder``, ``pathosam_small_classes``), not SAM weights."""
    return any(name in (e.decoder, e.semantic_decoder) for e in MODELS.values()) or name.endswith("decoder")


def sam_names() -> list[str]:
    """Registry names of SAM weights (what ``load_model`` takes as its model), decoders left out."""
    return [n for n in MODELS if not is_decoder(n)]


def get(name: str) -> ModelEntry:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(MODELS)}")
    return MODELS[name]


def entry_of_file(digest: str) -> ModelEntry | None:
    """The registered entry whose file has the xxh128 hex ``digest`` (:func:`file_hash`), or None:
    how a registered model's file loaded by its path is recognised."""
    for entry in MODELS.values():
        if entry.hash == f"xxh128:{digest}":
            return entry
    return None


def ais_defaults(entry: ModelEntry | None) -> dict[str, float | str]:
    """The AIS parameters ``entry`` recommends over the reference's defaults ({} for None): applied
    to the model however it was loaded (by registry name, or its file by path: :func:`entry_of_file`)."""
    return dict(entry.ais_defaults) if entry is not None else {}


def cache_dir() -> Path:
    """Root of the cache: ``$PATHOSAM_CACHE_DIR`` or the user cache directory."""
    env = os.environ.get("PATHOSAM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pathosam"))


def path(name: str) -> Path:
    """Where the file of registry entry ``name`` lives (or will live) in the cache; bundled
    models live inside the package."""
    entry = get(name)
    if entry.bundled:
        return Path(__file__).resolve().parent / entry.bundled
    return cache_dir() / "models" / name


def file_hash(file: str | os.PathLike, algorithm: str = "xxh128") -> str:
    """Hex digest of a file (``xxh128`` or ``sha256``), read in 16 MiB chunks."""
    if algorithm == "xxh128":
        import xxhash

        h = xxhash.xxh128()
    elif algorithm == "sha256":
        h = hashlib.sha256()
    else:
        raise ValueError(f"unknown hash algorithm {algorithm!r}")
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(name: str, file: str | os.PathLike) -> None:
    """Raise :class:`HashMismatchError` unless ``file`` has the registered hash of ``name``."""
    algo, expected = get(name).hash.split(":", 1)
    actual = file_hash(file, algo)
    if actual != expected:
        raise HashMismatchError(
            f"{file}: {algo} hash {actual} does not match the registered hash {expected} of {name!r} "
            "(corrupt or incomplete download, or a different file)"
        )


def _manual_hint(name: str) -> str:
    e = get(name)
    return (
        f"Download it by hand from {e.url} and place it at {path(name)} "
        f"(or run: pathosam models import {name} FILE). Set PATHOSAM_CACHE_DIR to use another cache folder."
    )


def offline() -> bool:
    """True when ``$PATHOSAM_OFFLINE`` is set to anything but ``""``, ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get("PATHOSAM_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def fetch(name: str, progress: bool = True, download: bool = True) -> Path:
    """Return the cached file of ``name``, downloading and verifying it if needed.

    Nothing is downloaded when ``download`` is false or :func:`offline` is true; a missing file
    then raises :class:`ModelNotAvailableError` saying where to place it by hand.
    """
    target = path(name)
    if target.is_file():
        return target
    if get(name).bundled:
        raise ModelNotAvailableError(f"the bundled model file {target} is missing: reinstall pathosam")
    if not download or offline():
        raise ModelNotAvailableError(f"model file {name!r} is not in the cache. {_manual_hint(name)}")
    entry = get(name)
    from tqdm.auto import tqdm

    from .io.atomic import atomic_write

    with atomic_write(target) as tmp:  # no partial file is left behind, whatever happens
        try:
            with urllib.request.urlopen(entry.url, timeout=60) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}",
                          disable=not progress) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except OSError as err:
            raise ModelNotAvailableError(
                f"could not download {name!r} from {entry.url}: {err}. {_manual_hint(name)}") from None
        try:
            verify_file(name, tmp)
        except HashMismatchError as err:
            raise HashMismatchError(
                f"the file downloaded from {entry.url} was rejected: {err}. {_manual_hint(name)}") from None
    return target


def import_file(name: str, file: str | os.PathLike, verify: bool = True) -> Path:
    """Copy a file obtained by hand into the cache under ``name`` (hash-checked by default)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {file}")
    if verify:
        verify_file(name, file)
    from .io.atomic import atomic_write

    target = path(name)
    with atomic_write(target) as tmp:
        shutil.copyfile(file, tmp)
    return target


def verify_cache(names: Iterable[str] | None = None) -> dict[str, str]:
    """Check cached files (all registered, or ``names``): ``{name: "ok" | "missing" | "hash mismatch: ..."}``."""
    status = {}
    for name in (MODELS if names is None else list(names)):
        p = path(name)
        if not p.is_file():
            status[name] = "missing"
            continue
        try:
            verify_file(name, p)
            status[name] = "ok"
        except HashMismatchError as err:
            status[name] = f"hash mismatch: {err}"
    return status
