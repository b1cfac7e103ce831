"""The dataset contract: :class:`Sample`, the lazy :class:`Dataset`, the format registry.

A reader is a :class:`Dataset` subclass registered under a short format name. It implements

* ``_scan()``: list every sample of the on-disk dataset (all splits) as :class:`Entry` objects
  (file paths only; no pixels are read), and
* ``_read(entry)``: read one sample from disk (image, instance labels, optional classes),

and may implement ``detect(tree)`` so that ``open_dataset(path, format="auto")`` recognises the
layout. Everything else (split selection, unique names, indexing, views) lives here.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, overload

import numpy as np

#: Folders that are never dataset content (macOS archive litter, VCS folders, caches).
_SKIP_DIRS = {"__MACOSX", "__pycache__"}


# --------------------------------------------------------------------------------------------
# Sample
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One annotated image.

    Attributes
    ----------
    name : str
        Unique within its dataset (a file stem, or e.g. ``"fold3_00012"`` for PanNuke). Safe to
        use as a file name (no path separators).
    image : np.ndarray
        (H, W, 3) uint8 RGB, indexed [row, col, channel].
    labels : np.ndarray
        (H, W) uint32 instance labels, 0 = background, objects numbered 1..N consecutively.
    classes : np.ndarray or None
        (H, W) uint8 semantic class map (0 = background) for formats with classes, else None.
    class_names : tuple of str or None
        ``class_names[k]`` is the name of class id ``k``; index 0 is always ``"background"``.
    meta : dict
        Extras from the reader: ``split``, the source file paths, and format-specific fields
        (e.g. PanNuke ``tissue``, GlaS ``grade``, padding applied by :func:`pad_sample`).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"sample {self.name!r}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
            )
        self.image = image
        self.labels = _as_uint(self.labels, np.uint32, f"sample {self.name!r}: labels")
        if self.labels.shape != image.shape[:2]:
            raise ValueError(
                f"sample {self.name!r}: labels shape {self.labels.shape} differs from image shape {image.shape[:2]}"
            )
        if self.classes is not None:
            self.classes = _as_uint(self.classes, np.uint8, f"sample {self.name!r}: classes")
            if self.classes.shape != image.shape[:2]:
                raise ValueError(
                    f"sample {self.name!r}: classes shape {self.classes.shape} differs from image shape "
                    f"{image.shape[:2]}"
                )
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.labels.shape[0], self.labels.shape[1]

    @property
    def n_objects(self) -> int:
        """Number of objects (the largest label id, ids being consecutive)."""
        return int(self.labels.max()) if self.labels.size else 0


def _as_uint(a: np.ndarray, dtype: type, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (H, W), got shape {a.shape}")
    if a.dtype == dtype:
        return a
    if a.dtype == bool or a.dtype.kind not in "ui":
        raise ValueError(f"{what} must have an integer dtype, got {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > np.iinfo(dtype).max):
        raise ValueError(f"{what}: values {int(a.min())}..{int(a.max())} do not fit {np.dtype(dtype).name}")
    return a.astype(dtype)


# --------------------------------------------------------------------------------------------
# Directory scanning shared by detection and readers
# --------------------------------------------------------------------------------------------


class Tree:
    """The folders and files under ``root`` down to ``max_depth`` levels (hidden entries and
    ``__MACOSX`` skipped), listed once and shared by every format's ``detect``."""

    def __init__(self, root: str | os.PathLike, max_depth: int = 5):
        self.root = Path(root)
        self.max_depth = max_depth
        self.entries: dict[Path, tuple[list[str], list[str]]] = {}
        self._walk(self.root, 0)

    def _walk(self, d: Path, depth: int) -> None:
        try:
            items = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        dirs, files = [], []
        for e in items:
            if e.name.startswith(".") or e.name in _SKIP_DIRS:
                continue
            try:
                if e.is_dir():
                    dirs.append(e.name)
                elif e.is_file():
                    files.append(e.name)
            except OSError:
                continue
        self.entries[d] = (dirs, files)
        if depth < self.max_depth:
            for name in dirs:
                self._walk(d / name, depth + 1)

    def dirs(self) -> list[Path]:
        """Every folder listed (root included), in sorted walk order."""
        return list(self.entries)

    def files_in(self, d: Path, suffixes: Iterable[str] | None = None) -> list[Path]:
        """Files directly in ``d`` (optionally only those with one of ``suffixes``, any case)."""
        _, files = self.entries.get(Path(d), ([], []))
        sfx = None if suffixes is None else tuple(s.lower() for s in suffixes)
        return [Path(d) / f for f in files if sfx is None or f.lower().endswith(sfx)]

    def subdirs(self, d: Path) -> list[str]:
        return list(self.entries.get(Path(d), ([], []))[0])

    def files(self, suffixes: Iterable[str] | None = None) -> list[Path]:
        """All files of the tree with one of ``suffixes``."""
        out: list[Path] = []
        for d in self.entries:
            out.extend(self.files_in(d, suffixes))
        return out

    def dirs_named(self, pattern: str) -> list[Path]:
        """Folders whose name matches the regular expression ``pattern`` (case-insensitive, full match)."""
        rx = re.compile(pattern, re.IGNORECASE)
        return [d for d in self.entries if rx.fullmatch(d.name)]


def natural_key(s: str) -> tuple:
    """Sort key that orders ``img2`` before ``img10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s)))


# --------------------------------------------------------------------------------------------
# Dataset and registry
# --------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One sample before it is read: its file paths and what the reader needs to read it.

    ``group`` is the prefix used to make ``stem`` unique when stems repeat across the dataset
    (defaults to the split); the final ``name`` is set by :class:`Dataset`.
    """

    stem: str
    split: str | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    name: str = ""


_REGISTRY: dict[str, type["Dataset"]] = {}


def register(cls: type["Dataset"]) -> type["Dataset"]:
    """Class decorator: register a reader under ``cls.format``."""
    if not cls.format:
        raise ValueError(f"{cls.__name__} has no format name")
    _REGISTRY[cls.format] = cls
    return cls


def list_formats() -> list[str]:
    """Names of all registered formats (usable as ``open_dataset(..., format=NAME)``)."""
    return sorted(_REGISTRY)


def get_format(name: str) -> type["Dataset"]:
    """The reader class registered under ``name``."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset format {name!r}; known formats: {', '.join(list_formats())}") from None


class Dataset(Sequence[Sample]):
    """A lazy, read-only sequence of :class:`Sample` objects read from disk on access.

    ``ds[i]`` reads sample ``i``; ``ds["NAME"]`` reads the sample of that name; ``ds[a:b]`` is
    a lazy view. ``len(ds)``, ``ds.names``, ``ds.name`` (the dataset's name), ``ds.splits`` (the
    splits the data on disk has), ``ds.split`` (the selection), ``ds.class_names``.
    Subclasses set ``format``, ``layout`` (a one-line description for errors) and implement
    ``_scan`` and ``_read``.
    """

    format: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    #: alias (lower case) -> canonical split names, e.g. {"test": ("testA", "testB")}
    split_aliases: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: hint shown when a split is requested from a format without an official split
    no_split_hint: ClassVar[str] = (
        "it has no official split; make one with pathosam.datasets.split_names(ds.names, ...) and ds.select(...)"
    )
    class_names: tuple[str, ...] | None = None

    def __init__(self, root: str | os.PathLike, split: str | Sequence[str] | None = None, *, name: str | None = None):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"dataset path is not a folder: {self.root}")
        entries = list(self._scan())
        if not entries:
            raise ValueError(
                f"no {self.format} samples found under {self.root}; expected layout: {self.layout}"
            )
        _assign_names(entries, self.format, self.root)
        self._all = entries
        self.splits: tuple[str, ...] = tuple(sorted({e.split for e in entries if e.split is not None}, key=natural_key))
        self.split = split
        self._entries = self._select(entries, split)
        self.name = name or self._default_name()

    # -- to implement --------------------------------------------------------------------

    def _scan(self) -> Iterable[Entry]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, entry: Entry) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        """Whether the folder listed by ``tree`` looks like this format."""
        return False

    def _default_name(self) -> str:
        return self.format

    # -- split handling -------------------------------------------------------------------

    def _canonical_splits(self, split: str) -> tuple[str, ...]:
        key = str(split).strip()
        by_lower = {s.lower(): s for s in self.splits}
        if key.lower() in by_lower:
            return (by_lower[key.lower()],)
        alias = self.split_aliases.get(key.lower())
        if alias is not None:
            return alias
        norm = self._normalise_split(key)
        if norm is not None and norm.lower() in by_lower:
            return (by_lower[norm.lower()],)
        aliases = f"; aliases: {', '.join(sorted(self.split_aliases))}" if self.split_aliases else ""
        raise ValueError(
            f"{self.format} dataset at {self.root}: unknown split {split!r}; "
            f"available: {', '.join(self.splits) or 'none'}{aliases}"
        )

    def _normalise_split(self, split: str) -> str | None:
        """Hook for readers that accept several spellings of a split (e.g. ``"Fold 1"``)."""
        return None

    def _select(self, entries: list[Entry], split: str | Sequence[str] | None) -> list[Entry]:
        if split is None:
            return list(entries)
        if not self.splits:
            raise ValueError(f"{self.format} dataset at {self.root}: cannot select split {split!r}: {self.no_split_hint}")
        requested = [split] if isinstance(split, str) else list(split)
        wanted: set[str] = set()
        for s in requested:
            wanted.update(self._canonical_splits(s))
        chosen = [e for e in entries if e.split in wanted]
        if not chosen:
            raise ValueError(f"{self.format} dataset at {self.root}: split {split!r} has no samples")
        return chosen

    # -- sequence protocol ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int | str) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> "Dataset": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._view(self._entries[index])
        if isinstance(index, str):
            entry = self._by_name().get(index)
            if entry is None:
                raise KeyError(f"{self.name}: no sample named {index!r}")
        else:
            try:
                entry = self._entries[index]
            except TypeError:
                raise TypeError(f"dataset indices must be int, str or slice, not {type(index).__name__}") from None
        return self.read(entry)

    def __iter__(self):
        for entry in self._entries:
            yield self.read(entry)

    def __contains__(self, item) -> bool:
        if isinstance(item, str):
            return item in self._by_name()
        return False

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split is not None else ""
        return f"<{type(self).__name__} {self.name!r} format={self.format!r} n={len(self)}{split} root={str(self.root)!r}>"

    def _by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self._entries}

    def read(self, entry: Entry) -> Sample:
        """Read one entry from disk (what indexing does)."""
        sample = self._read(entry)
        sample.name = entry.name
        meta = {"split": entry.split, **{f"{k}_path": str(v) for k, v in entry.paths.items()}, **entry.meta}
        meta.update(sample.meta)
        sample.meta = meta
        return sample

    # -- selection ------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Sample names in dataset order."""
        return [e.name for e in self._entries]

    @property
    def sources(self) -> dict[str, str]:
        """``{name: source image}``: samples cut from one source image (tiles of one field) share
        it (``meta["source"]`` of their entries); other samples are their own source. Pass it as
        ``split_names(..., groups=ds.sources)`` so correlated tiles stay on one side of a split."""
        return {e.name: str(e.meta.get("source", e.name)) for e in self._entries}

    @property
    def entries(self) -> list[Entry]:
        """The (unread) entries of the selection: names, splits, file paths."""
        return list(self._entries)

    def select(self, names: Iterable[str]) -> "Dataset":
        """A lazy view with the samples named in ``names`` (in that order)."""
        by_name = self._by_name()
        names = list(names)
        missing = [n for n in names if n not in by_name]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise KeyError(f"{self.name}: {len(missing)} unknown sample name(s): {shown}")
        return self._view([by_name[n] for n in names])

    def _view(self, entries: list[Entry]) -> "Dataset":
        view = copy.copy(self)
        view._entries = list(entries)
        return view


def _assign_names(entries: list[Entry], fmt: str, root: Path) -> None:
    """Name = stem, or ``group_stem`` for every entry when stems repeat anywhere in the dataset
    (decided on all splits, so a sample's name does not depend on the split selected)."""
    stems = [e.stem for e in entries]
    if len(set(stems)) == len(stems):
        for e in entries:
            e.name = e.stem
    else:
        for e in entries:
            group = e.group if e.group is not None else e.split
            e.name = f"{group}_{e.stem}" if group else e.stem
    seen: dict[str, Entry] = {}
    dupes = []
    for e in entries:
        e.name = e.name.replace("/", "_").replace("\\", "_")
        if e.name in seen:
            dupes.append(e.name)
        seen[e.name] = e
    if dupes:
        raise ValueError(f"{fmt} dataset at {root}: sample names are not unique: {', '.join(sorted(set(dupes))[:10])}")


def detect_format(path: str | os.PathLike) -> str:
    """The one registered format whose layout matches the folder ``path`` (when a reader and
    a subclass of it both match, the subclass).

    Raises ValueError naming the candidates when several match, or the known formats when none does.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"dataset path is not a folder: {root}")
    tree = Tree(root)
    hits = [name for name, cls in sorted(_REGISTRY.items()) if cls.detect(tree)]
    # a more specific reader (a subclass, e.g. consep_tiles of folder) wins over its base
    hits = [h for h in hits if not any(o != h and issubclass(_REGISTRY[o], _REGISTRY[h]) for o in hits)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        known = "\n".join(f"  {n}: {_REGISTRY[n].layout}" for n in list_formats())
        raise ValueError(f"cannot recognise the dataset layout of {root}; pass format=... Known formats:\n{known}")
    raise ValueError(f"the dataset layout of {root} is ambiguous (matches {', '.join(hits)}); pass format=...")


def open_dataset(path: str | os.PathLike, format: str = "auto", split: str | Sequence[str] | None = None,
                 **kwargs) -> Dataset:
    """Open a dataset folder with the reader for ``format`` (``"auto"``: detected from the layout).

    Parameters
    ----------
    path : str or PathLike
        The dataset folder (the folder the archive was unpacked into, or the data folder inside).
    format : str
        One of :func:`list_formats`, or ``"auto"``.
    split : str, sequence of str or None
        Split(s) to select (format-specific names, see each reader); None = all samples.
    **kwargs
        Reader options (e.g. ``annotator=`` for CryoNuSeg, ``variant=`` for CPM, ``name=``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    fmt = detect_format(path) if format in (None, "auto") else str(format).lower()
    if fmt in _FORMAT_ALIASES:
        fmt, extra = _FORMAT_ALIASES[fmt]
        kwargs = {**extra, **kwargs}
    return get_format(fmt)(path, split=split, **kwargs)


#: Extra spellings accepted by :func:`open_dataset` (format, reader options).
_FORMAT_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cpm15": ("cpm", {"variant": "cpm15"}),
    "cpm17": ("cpm", {"variant": "cpm17"}),
}
