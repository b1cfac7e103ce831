"""Datasets whose labels (or whole samples) are numpy ``.npy`` files: LyNSeC, NuClick (IHC),
SRSA-Net (IHC TMA)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components

from ._io import as_integer_labels, read_rgb, relabel_consecutive, to_rgb_uint8
from .base import Dataset, Entry, Sample, Tree, natural_key, register
from .folder import match_by_stem
from .masks import _image_files


@register
class LyNSeCDataset(Dataset):
    """LyNSeC (lymphoma; zenodo 8065174, ``lynsec.zip``)::

        lynsec 1/NAME.npy      IHC: (H, W, 4) = RGB + instance labels
        lynsec 2/NAME.npy ...  H&E (every other ``lynsec*`` folder)

    Splits are the modalities: ``ihc`` (folder ``lynsec 1``) and ``h&e`` (also ``he``).
    As in the reference, H&E files named ``{i}_l2`` with ``i < 35`` are skipped (their labels do
    not match the images; ``skip_mismatched=False`` keeps them). Names: file stems, prefixed with
    the folder name (``lynsec_2_0_l2``) if stems repeat. Files are memory-mapped.
    The reference uses all images (an optional unseeded 20 %/15 % CSV per modality exists).
    """

    format = "lynsec"
    layout = "lynsec 1/*.npy (IHC) + lynsec 2.../*.npy (H&E), each (H, W, 4) RGB + instance channel"
    split_aliases = {"he": ("h&e",), "h_e": ("h&e",), "hne": ("h&e",)}
    _MISMATCHED = frozenset(f"{i}_l2" for i in range(35))

    def __init__(self, root, split=None, *, name=None, skip_mismatched: bool = True):
        self._skip = skip_mismatched
        super().__init__(root, split, name=name)

    @staticmethod
    def _folders(tree: Tree) -> list[Path]:
        return [d for d in tree.dirs_named(r"lynsec.*") if tree.files_in(d, [".npy"])]

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(cls._folders(tree))

    def _scan(self):
        tree = Tree(self.root)
        for d in sorted(self._folders(tree), key=lambda d: natural_key(d.name)):
            modality = "ihc" if re.fullmatch(r"lynsec[\s_-]*1", d.name.strip(), re.IGNORECASE) else "h&e"
            for p in sorted(tree.files_in(d, [".npy"]), key=lambda p: natural_key(p.name)):
                if self._skip and modality == "h&e" and p.stem in self._MISMATCHED:
                    continue
                yield Entry(stem=p.stem, split=modality, paths={"sample": p}, group=d.name.replace(" ", "_"),
                            meta={"folder": d.name})

    def _read(self, entry: Entry) -> Sample:
        p = entry.paths["sample"]
        arr = np.load(p, mmap_mode="r")
        if arr.ndim != 3 or arr.shape[2] != 4:
            raise ValueError(f"{p}: expected an (H, W, 4) array (RGB + instance labels), got {arr.shape}")
        image = to_rgb_uint8(np.asarray(arr[..., :3]), name=str(p))
        labels = relabel_consecutive(as_integer_labels(np.asarray(arr[..., 3]), f"{p} (channel 3)"))
        return Sample(entry.stem, image, labels)


@register
class NuClickDataset(Dataset):
    """NuClick IHC lymphocytes (``ihc_nuclick.zip``)::

        IHC_nuclick/IHC/images/{Train,Validation}/NAME.png     256x256 RGB
        IHC_nuclick/IHC/masks/{Train,Validation}/NAME.npy      (H, W) instance labels

    Splits: ``train`` and ``validation`` (also ``val``); PathoSAM evaluates on Validation,
    zero-padded to 512 at the top-left (:func:`pad_sample`).
    """

    format = "nuclick"
    layout = "images/{Train,Validation}/NAME.png + masks/{Train,Validation}/NAME.npy"
    split_aliases = {"val": ("validation",), "valid": ("validation",)}

    @staticmethod
    def _roots(tree: Tree) -> list[Path]:
        out = []
        for d in tree.dirs_named(r"images"):
            subs = {s.lower() for s in tree.subdirs(d)}
            masks = [s for s in tree.subdirs(d.parent) if s.lower() == "masks"]
            if masks and subs & {"train", "validation"}:
                out.append(d.parent)
        return out

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(cls._roots(tree))

    def _scan(self):
        tree = Tree(self.root, max_depth=6)
        for base in self._roots(tree):
            idir = next(base / s for s in tree.subdirs(base) if s.lower() == "images")
            mdir = next(base / s for s in tree.subdirs(base) if s.lower() == "masks")
            for split_dir in tree.subdirs(idir):
                mmatch = [s for s in tree.subdirs(mdir) if s.lower() == split_dir.lower()]
                if not mmatch:
                    raise ValueError(f"{mdir}: no '{split_dir}' folder matching {idir / split_dir}")
                images = _image_files(idir / split_dir)
                masks = _image_files(mdir / mmatch[0], (".npy",))
                for stem, ip, mp in match_by_stem(images, masks, str(base / split_dir), True):
                    yield Entry(stem=stem, split=split_dir.lower(), paths={"image": ip, "label": mp})

    def _read(self, entry: Entry) -> Sample:
        mp = entry.paths["label"]
        labels = relabel_consecutive(as_integer_labels(np.load(mp, allow_pickle=False), str(mp)))
        return Sample(entry.stem, read_rgb(entry.paths["image"]), labels)


@register
class SRSANetDataset(Dataset):
    """SRSA-Net IHC TMA (zenodo 7647846, ``IHC_TMA_dataset.zip``)::

        IHC_TMA_dataset/images/fold{1,2,3}_NAME.png    256x256 RGB
        IHC_TMA_dataset/masks/fold{1,2,3}_NAME.npy     (2, H, W) masks

    Labels as the reference: the two mask channels are summed (numpy ``+`` in the stored dtype)
    and ``skimage.measure.label`` (8-connectivity, regions of equal value) gives the instances:
    **touching nuclei merge**, and where the two channels overlap (sum 2) the overlap is its own
    object. Splits: ``fold1``, ``fold2``, ``fold3`` (aliases ``train``/``val``/``test``, the
    reference's mapping).
    """

    format = "srsanet"
    layout = "images/fold{1,2,3}_NAME.png + masks/fold{1,2,3}_NAME.npy (2, H, W)"
    split_aliases = {"train": ("fold1",), "val": ("fold2",), "test": ("fold3",)}

    @staticmethod
    def _roots(tree: Tree) -> list[Path]:
        out = []
        for d in tree.dirs_named(r"images"):
            if any(re.match(r"fold\d+_", p.name, re.IGNORECASE) for p in tree.files_in(d, [".png"])) and \
                    any(s.lower() == "masks" for s in tree.subdirs(d.parent)):
                out.append(d.parent)
        return out

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(cls._roots(tree))

    def _normalise_split(self, split: str) -> str | None:
        m = re.fullmatch(r"fold[\s_-]*(\d+)|(\d+)", split.strip(), re.IGNORECASE)
        return f"fold{int(m.group(1) or m.group(2))}" if m else None

    def _scan(self):
        tree = Tree(self.root)
        for base in self._roots(tree):
            idir = next(base / s for s in tree.subdirs(base) if s.lower() == "images")
            mdir = next(base / s for s in tree.subdirs(base) if s.lower() == "masks")
            images = _image_files(idir, (".png",))
            masks = _image_files(mdir, (".npy",))
            for stem, ip, mp in match_by_stem(images, masks, str(base), True):
                m = re.match(r"fold(\d+)_", stem, re.IGNORECASE)
                split = f"fold{int(m.group(1))}" if m else None
                yield Entry(stem=stem, split=split, paths={"image": ip, "label": mp})

    def _read(self, entry: Entry) -> Sample:
        mp = entry.paths["label"]
        arr = np.load(mp, allow_pickle=False)
        if arr.ndim != 3 or arr.shape[0] != 2:
            raise ValueError(f"{mp}: expected a (2, H, W) mask array, got shape {arr.shape}")
        summed = arr[0] + arr[1]
        labels = connected_components(as_integer_labels(summed, str(mp)), connectivity=2)
        return Sample(entry.stem, read_rgb(entry.paths["image"]), relabel_consecutive(labels))
