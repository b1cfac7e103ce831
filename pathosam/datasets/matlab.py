"""Datasets whose labels are MATLAB ``.mat`` files (MATLAB v5, read with scipy): Lizard, CoNSeP,
CPM-15/17.

Which of the three a ``Labels/*.mat`` folder is follows from the variables of its first file:
``type_map`` -> CoNSeP, ``inst_map`` + ``class`` + ``id`` -> Lizard, ``inst_map`` only -> CPM.
Instance maps are renumbered 1..N (same objects, ids in increasing order of the stored ids).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ._io import (IMAGE_SUFFIXES, as_integer_labels, class_map_from_ids, loadmat, mat_variables, read_rgb,
                  relabel_consecutive)
from .base import Dataset, Entry, Sample, Tree, natural_key, register
from .folder import match_by_stem

_SPLIT_DIRS = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "val",
               "valid": "val", "validation": "val"}


def mat_kind(path: Path) -> str | None:
    names = mat_variables(path)
    if "type_map" in names and "inst_map" in names:
        return "consep"
    if {"inst_map", "class", "id"} <= names:
        return "lizard"
    if "inst_map" in names:
        return "cpm"
    return None


def label_dirs(tree: Tree, kind: str) -> list[Path]:
    """Folders named ``Labels`` whose first ``.mat`` file is of ``kind``."""
    out = []
    for d in tree.dirs_named(r"labels"):
        mats = sorted(tree.files_in(d, [".mat"]), key=lambda p: natural_key(p.name))
        if mats and mat_kind(mats[0]) == kind:
            out.append(d)
    return out


def _sibling(d: Path, name: str) -> Path | None:
    """The sibling folder of ``d`` called ``name`` in any letter case."""
    try:
        for p in d.parent.iterdir():
            if p.is_dir() and p.name.lower() == name.lower():
                return p
    except OSError:
        pass
    return None


def _split_of(labels_dir: Path) -> str | None:
    return _SPLIT_DIRS.get(labels_dir.parent.name.lower())


def _image_label_pairs(tree: Tree, kind: str, root: Path, strict: bool):
    """(labels dir, split, [(stem, image, mat)]) for every ``Images`` + ``Labels`` pair of ``kind``."""
    for ld in label_dirs(tree, kind):
        idir = _sibling(ld, "images")
        if idir is None:
            raise ValueError(f"{ld}: no 'Images' folder next to this 'Labels' folder")
        images = [p for p in sorted(idir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith(".")]
        mats = tree.files_in(ld, [".mat"])
        yield ld, _split_of(ld), match_by_stem(images, mats, str(ld.parent), strict)


# --------------------------------------------------------------------------------------------


@register
class LizardDataset(Dataset):
    """Lizard (Graham et al. 2021), as on Kaggle ``aadimator/lizard-dataset``::

        lizard_images{1,2}/Lizard_Images{1,2}/NAME.png
        lizard_labels/Lizard_Labels/Labels/NAME.mat   inst_map (H, W), id (N, 1), class (N, 1), ...
        lizard_labels/Lizard_Labels/info.csv          Filename, Source, Split (1/2/3)

    Images are the ``.png`` files in folders whose name contains "image" (the ``overlay``
    folders are ignored), matched to the ``.mat`` files by stem. Classes: the ``class`` of each
    instance id (``id``) painted over its pixels, 1 neutrophil, 2 epithelial, 3 lymphocyte,
    4 plasma, 5 eosinophil, 6 connective; an instance missing from ``id`` gets class 0.
    Splits from info.csv: ``split1``, ``split2``, ``split3`` (also ``"1"``..``"3"``), the
    ``Split`` column (Lizard's 3-fold cross-validation split, as torch_em reads it).
    """

    format = "lizard"
    layout = "**/Lizard_Images*/NAME.png + **/Labels/NAME.mat (inst_map, id, class) [+ info.csv]"
    class_names = ("background", "neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")

    def __init__(self, root, split=None, *, name=None, strict: bool = True):
        self._strict = strict
        super().__init__(root, split, name=name)

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(label_dirs(tree, "lizard"))

    def _normalise_split(self, split: str) -> str | None:
        m = re.fullmatch(r"(?:split|fold)?[\s_-]*(\d+)", split.strip(), re.IGNORECASE)
        return f"split{int(m.group(1))}" if m else None

    def _scan(self):
        tree = Tree(self.root)
        mats = [p for d in label_dirs(tree, "lizard") for p in tree.files_in(d, [".mat"])]
        pngs = [p for p in tree.files([".png"])
                if "image" in p.parent.name.lower()
                and not any("overlay" in part.lower() for part in p.relative_to(self.root).parts)]
        splits = self._info_splits(tree)
        for stem, ip, mp in match_by_stem(pngs, mats, str(self.root), self._strict):
            yield Entry(stem=stem, split=splits.get(stem), paths={"image": ip, "label": mp})

    def _info_splits(self, tree: Tree) -> dict[str, str]:
        infos = [p for p in tree.files([".csv"]) if p.name.lower() == "info.csv"]
        if not infos:
            return {}
        out = {}
        with open(infos[0], newline="") as fh:
            for row in csv.DictReader(fh):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
                if row.get("filename") and row.get("split", "").isdigit():
                    out[Path(row["filename"]).stem] = f"split{int(row['split'])}"
        return out

    def _read(self, entry: Entry) -> Sample:
        mp = entry.paths["label"]
        mat = loadmat(mp, ["inst_map"], optional=["id", "class"])
        inst = as_integer_labels(mat["inst_map"], str(mp))
        classes = None
        if "id" in mat and "class" in mat:
            classes = class_map_from_ids(inst, mat["id"], mat["class"], str(mp))
        image = read_rgb(entry.paths["image"])
        return Sample(entry.stem, image, relabel_consecutive(inst), classes,
                      self.class_names if classes is not None else None)


# --------------------------------------------------------------------------------------------

CONSEP_TYPES = ("background", "other", "inflammatory", "healthy epithelial", "dysplastic/malignant epithelial",
                "fibroblast", "muscle", "endothelial")
#: HoVer-Net's 4-class grouping of the 7 CoNSeP types (``merge_types=True``).
CONSEP_MERGED = ("background", "other", "inflammatory", "epithelial", "spindle-shaped")
_CONSEP_MERGE_LUT = np.array([0, 1, 2, 3, 3, 4, 4, 4], np.uint8)


@register
class CoNSePDataset(Dataset):
    """CoNSeP (Graham et al., HoVer-Net), the original release::

        CoNSeP/{Train,Test}/Images/NAME.png     RGB(A), alpha dropped
        CoNSeP/{Train,Test}/Labels/NAME.mat     inst_map (H, W), type_map (H, W), ...

    Classes = ``type_map`` (1 other, 2 inflammatory, 3 healthy epithelial, 4 dysplastic/malignant
    epithelial, 5 fibroblast, 6 muscle, 7 endothelial); ``merge_types=True`` gives HoVer-Net's
    4 classes (1 other, 2 inflammatory, 3 epithelial = 3+4, 4 spindle-shaped = 5+6+7).
    Splits: ``train``, ``test`` (from the ``Train``/``Test`` folder names).
    Note: the reference (torch_em) reads a tiled 224-px Kaggle re-host and stitches the tiles back
    into the same 1000x1000 images; that tiled layout is not read here.
    """

    format = "consep"
    layout = "{Train,Test}/Images/NAME.png + {Train,Test}/Labels/NAME.mat (inst_map, type_map)"
    class_names = CONSEP_TYPES

    def __init__(self, root, split=None, *, name=None, merge_types: bool = False, strict: bool = True):
        self._merge = merge_types
        self._strict = strict
        self.class_names = CONSEP_MERGED if merge_types else CONSEP_TYPES
        super().__init__(root, split, name=name)

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(label_dirs(tree, "consep"))

    def _scan(self):
        tree = Tree(self.root)
        for _, split, pairs in _image_label_pairs(tree, "consep", self.root, self._strict):
            for stem, ip, mp in pairs:
                yield Entry(stem=stem, split=split, paths={"image": ip, "label": mp})

    def _read(self, entry: Entry) -> Sample:
        mp = entry.paths["label"]
        mat = loadmat(mp, ["inst_map", "type_map"])
        inst = as_integer_labels(mat["inst_map"], str(mp))
        types = as_integer_labels(mat["type_map"], f"{mp} type_map")
        if types.size and types.max() > 7:
            raise ValueError(f"{mp}: type_map has ids above 7")
        types = types.astype(np.uint8)
        if self._merge:
            types = _CONSEP_MERGE_LUT[types]
        image = read_rgb(entry.paths["image"])
        return Sample(entry.stem, image, relabel_consecutive(inst), types, self.class_names)


# --------------------------------------------------------------------------------------------

_VARIANT = re.compile(r"cpm[\s_-]*(\d+)", re.IGNORECASE)


@register
class CPMDataset(Dataset):
    """CPM-15 and CPM-17 (Vu et al. 2019) as restructured for HoVer-Net (Google Drive)::

        cpm15/Images/NAME.png + cpm15/Labels/NAME.mat                       (no official split)
        cpm17/{train,test}/Images/NAME.png + cpm17/{train,test}/Labels/NAME.mat

    ``.mat`` key ``inst_map``. The variant (``cpm15``/``cpm17``) comes from a folder name
    ``cpm15``/``cpm17`` at or above the ``Labels`` folder; when the folder holds both, pass
    ``variant=``. Splits: ``train``, ``test`` (CPM-17). CPM-15 has no official split (the
    reference draws an unseeded 25 % test / 20 % val CSV): use :func:`split_names`.
    Names: file stems, prefixed with the split (``train_image_00``) if stems repeat across splits.
    """

    format = "cpm"
    layout = "cpm15/{Images,Labels} or cpm17/{train,test}/{Images,Labels}, Labels/*.mat with inst_map"

    def __init__(self, root, split=None, *, name=None, variant: str | None = None, strict: bool = True):
        self._variant = None if variant is None else self._norm_variant(variant)
        self._strict = strict
        super().__init__(root, split, name=name)

    @staticmethod
    def _norm_variant(v: str) -> str:
        m = _VARIANT.fullmatch(str(v).strip()) or re.fullmatch(r"(\d+)", str(v).strip())
        if not m:
            raise ValueError(f"CPM variant must be 'cpm15' or 'cpm17', got {v!r}")
        return f"cpm{int(m.group(1))}"

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(label_dirs(tree, "cpm"))

    def _variant_of(self, d: Path) -> str | None:
        parts = [self.root.name, *d.relative_to(self.root).parts]
        for part in reversed(parts):
            m = _VARIANT.fullmatch(part.strip())
            if m:
                return f"cpm{int(m.group(1))}"
        return None

    def _scan(self):
        tree = Tree(self.root)
        found = []
        for ld, split, pairs in _image_label_pairs(tree, "cpm", self.root, self._strict):
            found.append((self._variant_of(ld), split, pairs))
        variants = sorted({v for v, _, _ in found}, key=lambda v: natural_key(v or ""))
        if self._variant is not None:
            found = [f for f in found if f[0] == self._variant]
            if not found:
                raise ValueError(f"{self.root}: no {self._variant} data (found: {variants})")
        elif len(variants) > 1:
            raise ValueError(f"{self.root} holds several CPM variants {variants}; pass variant='cpm15' or 'cpm17'")
        self._found_variant = found[0][0] if found else None
        for _, split, pairs in found:
            for stem, ip, mp in pairs:
                yield Entry(stem=stem, split=split, paths={"image": ip, "label": mp})

    def _default_name(self) -> str:
        return getattr(self, "_found_variant", None) or "cpm"

    def _read(self, entry: Entry) -> Sample:
        mp = entry.paths["label"]
        inst = as_integer_labels(loadmat(mp, ["inst_map"])["inst_map"], str(mp))
        image = read_rgb(entry.paths["image"])
        return Sample(entry.stem, image, relabel_consecutive(inst))
