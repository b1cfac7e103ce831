"""PanNuke (Gamper et al.): three folds of 256x256 H&E patches stored as numpy arrays.

On disk (as unpacked from ``fold_{1,2,3}.zip``; any nesting, e.g. ``fold_1/Fold 1/images/fold1``)::

    .../images/fold1/images.npy   (S, 256, 256, 3) float64 (or uint8) RGB, values 0..255
    .../images/fold1/types.npy    (S,) tissue type names (optional)
    .../masks/fold1/masks.npy     (S, 256, 256, 6): channels 0-4 instance maps of the classes
                                  neoplastic, inflammatory, connective, dead, epithelial;
                                  channel 5 background (ignored)

The fold is read from the nearest folder name ``fold1`` / ``Fold 1`` / ``fold_1`` above each file.
Instances: channels 0..4 in this order, each channel's ids renumbered consecutively after the
previous channel's (running offsets, as torch_em's ``labels/instances``); where channels overlap,
the later channel wins (as torch_em). Classes: channel index + 1 (1 neoplastic ... 5 epithelial),
the same numbering as :data:`pathosam.semantic.CLASS_NAMES`. Names: ``fold3_00012`` (0-based
index within the fold's arrays). Splits: ``fold1``, ``fold2``, ``fold3`` (also ``"1"``, ``"Fold 1"``,
``"fold_1"``); the PathoSAM paper trained on folds 1+2 and tested on fold 3.
Arrays are memory-mapped: opening a fold reads no pixels.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ._io import as_integer_labels, relabel_consecutive, to_rgb_uint8
from .base import Dataset, Entry, Sample, Tree, register

CLASS_NAMES = ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")
_FOLD = re.compile(r"fold[\s_-]*(\d+)", re.IGNORECASE)


def _fold_of(path: Path, root: Path) -> int | None:
    try:
        parts = [root.name, *path.relative_to(root).parts[:-1]]
    except ValueError:
        parts = list(path.parts[:-1])
    for part in reversed(parts):
        m = _FOLD.fullmatch(part.strip())
        if m:
            return int(m.group(1))
    return None


@register
class PanNukeDataset(Dataset):
    format = "pannuke"
    layout = "<fold>/images.npy (S,H,W,3) + <fold>/masks.npy (S,H,W,6) [+ types.npy], fold from folder names"
    class_names = CLASS_NAMES

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        names = {p.name.lower() for p in tree.files([".npy"])}
        return "images.npy" in names and "masks.npy" in names

    def _normalise_split(self, split: str) -> str | None:
        m = _FOLD.fullmatch(split) or re.fullmatch(r"(\d+)", split)
        return f"fold{int(m.group(1))}" if m else None

    def _scan(self):
        tree = Tree(self.root, max_depth=6)
        files = tree.files([".npy"])
        images = [p for p in files if p.name.lower() == "images.npy"]
        masks = [p for p in files if p.name.lower() == "masks.npy"]
        by_fold: dict[int | None, dict[str, list[Path]]] = {}
        for kind, paths in (("images", images), ("masks", masks)):
            for p in paths:
                by_fold.setdefault(_fold_of(p, self.root), {"images": [], "masks": []})[kind].append(p)
        for fold in sorted(by_fold, key=lambda f: -1 if f is None else f):
            found = by_fold[fold]
            where = f"fold {fold}" if fold is not None else "the dataset (no fold folder)"
            if len(found["images"]) != 1 or len(found["masks"]) != 1:
                raise ValueError(
                    f"PanNuke at {self.root}: {where} needs exactly one images.npy and one masks.npy, found "
                    f"images: {[str(p) for p in found['images']]}, masks: {[str(p) for p in found['masks']]}"
                )
            ip, mp = found["images"][0], found["masks"][0]
            im = np.load(ip, mmap_mode="r")
            ms = np.load(mp, mmap_mode="r")
            if im.ndim != 4 or im.shape[-1] not in (3, 4):
                raise ValueError(f"{ip}: expected (S, H, W, 3) images, got shape {im.shape}")
            if ms.ndim != 4 or ms.shape[-1] != 6:
                raise ValueError(f"{mp}: expected (S, H, W, 6) masks, got shape {ms.shape}")
            if ms.shape[:3] != im.shape[:3]:
                raise ValueError(f"{ip} {im.shape} and {mp} {ms.shape} do not hold the same samples")
            types = self._types(ip.parent / "types.npy", im.shape[0])
            split = f"fold{fold}" if fold is not None else None
            for i in range(im.shape[0]):
                meta = {"index": i}
                if types is not None:
                    meta["tissue"] = str(types[i])
                stem = f"{split}_{i:05d}" if split else f"{i:05d}"
                yield Entry(stem=stem, split=split, paths={"images": ip, "masks": mp}, meta=meta)

    @staticmethod
    def _types(path: Path, n: int):
        if not path.is_file():
            return None
        try:
            types = np.load(path, allow_pickle=False)
        except ValueError:
            warnings.warn(f"{path}: stored as Python objects; tissue types not read", stacklevel=3)
            return None
        if types.shape != (n,):
            warnings.warn(f"{path}: shape {types.shape} does not match {n} samples; tissue types not read", stacklevel=3)
            return None
        return types

    def _array(self, path: Path) -> np.ndarray:
        cache = self.__dict__.setdefault("_mm", {})
        if path not in cache:
            cache[path] = np.load(path, mmap_mode="r")
        return cache[path]

    def __getstate__(self):  # memory maps are reopened after pickling (DataLoader workers)
        state = dict(self.__dict__)
        state.pop("_mm", None)
        return state

    def _read(self, entry: Entry) -> Sample:
        i = entry.meta["index"]
        image = to_rgb_uint8(np.asarray(self._array(entry.paths["images"])[i]), name=f"{entry.paths['images']}[{i}]")
        masks = np.asarray(self._array(entry.paths["masks"])[i])
        labels, classes = channels_to_instances(masks[..., :5], f"{entry.paths['masks']}[{i}]")
        return Sample(entry.stem, image, labels, classes, CLASS_NAMES)


def channels_to_instances(channels: np.ndarray, what: str = "masks") -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) per-class instance maps -> (instance labels uint32, class map uint8 = channel + 1).

    Each channel's ids are renumbered consecutively after the previous channels'; a later
    channel overwrites an earlier one where both are non-zero.
    """
    h, w, c = channels.shape
    inst = np.zeros((h, w), np.int64)
    classes = np.zeros((h, w), np.uint8)
    offset = 0
    for k in range(c):
        lab = relabel_consecutive(as_integer_labels(channels[..., k], f"{what} channel {k}"))
        fg = lab > 0
        if not fg.any():
            continue
        inst[fg] = lab[fg].astype(np.int64) + offset
        classes[fg] = k + 1
        offset += int(lab.max())
    return relabel_consecutive(inst), classes
