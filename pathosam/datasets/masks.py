"""Datasets whose labels are mask images: TNBC (binary PNG), NuInsSeg and CryoNuSeg (instance
TIFFs in ``label masks modify``), GlaS (gland instance BMPs)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components

from ._io import IMAGE_SUFFIXES, as_integer_labels, read_array, read_instances, read_rgb, relabel_consecutive
from .base import Dataset, Entry, Sample, Tree, natural_key, register
from .folder import match_by_stem


def _image_files(d: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    return [p for p in sorted(d.iterdir(), key=lambda p: natural_key(p.name))
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")]


@register
class TNBCDataset(Dataset):
    """TNBC (Naylor et al. 2018; zenodo 1175282)::

        TNBC_NucleiSegmentation/Slide_XX/NAME.png   RGBA (alpha dropped)
        TNBC_NucleiSegmentation/GT_XX/NAME.png      binary nucleus mask (0 / 255)

    ``Slide_XX`` is paired with ``GT_XX``; files by stem. Instances are the connected components
    of the binary mask (8-connectivity, ``skimage.measure.label``), exactly as the reference does:
    **touching nuclei merge into one object**. No official split (the reference draws an unseeded
    20 % test / 15 % val CSV): use :func:`split_names`. ``__MACOSX`` folders are ignored.
    """

    format = "tnbc"
    layout = "Slide_XX/NAME.png + GT_XX/NAME.png (binary masks)"

    def __init__(self, root, split=None, *, name=None, strict: bool = True):
        self._strict = strict
        super().__init__(root, split, name=name)

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(tree.dirs_named(r"slide_.+")) and bool(tree.dirs_named(r"gt_.+"))

    def _scan(self):
        tree = Tree(self.root)
        for sd in sorted(tree.dirs_named(r"slide_.+"), key=lambda d: natural_key(str(d))):
            gt = sd.parent / ("GT_" + sd.name[len("slide_"):])
            if not gt.is_dir():
                alt = [d for d in tree.subdirs(sd.parent) if d.lower() == gt.name.lower()]
                if not alt:
                    raise ValueError(f"{sd}: no matching ground-truth folder {gt.name}")
                gt = sd.parent / alt[0]
            for stem, ip, lp in match_by_stem(_image_files(sd), _image_files(gt), str(sd.parent), self._strict):
                yield Entry(stem=stem, paths={"image": ip, "label": lp}, group=sd.name)

    def _read(self, entry: Entry) -> Sample:
        gt = read_array(entry.paths["label"])
        if gt.ndim == 3:
            gt = gt[..., :3].max(axis=-1) if gt.shape[2] > 1 else gt[..., 0]
        fg = as_integer_labels(gt, str(entry.paths["label"])) > 0
        labels = connected_components(fg, connectivity=2).astype(np.uint32)
        return Sample(entry.stem, read_rgb(entry.paths["image"]), labels)


# --------------------------------------------------------------------------------------------


@register
class NuInsSegDataset(Dataset):
    """NuInsSeg (Mahbod et al. 2024; Kaggle ``ipateam/nuinsseg``)::

        <tissue>/tissue images/NAME.png
        <tissue>/label masks modify/NAME.tif     instance labels

    (any number of folders above ``<tissue>``, e.g. ``data/``). Names are file stems (prefixed
    with the tissue folder name if stems repeat); ``meta["tissue"]`` is the tissue folder.
    No official split (the reference uses all images): use :func:`split_names`.
    """

    format = "nuinsseg"
    layout = "<tissue>/tissue images/NAME.png + <tissue>/label masks modify/NAME.tif"

    def __init__(self, root, split=None, *, name=None, strict: bool = True):
        self._strict = strict
        super().__init__(root, split, name=name)

    @staticmethod
    def _tissue_dirs(tree: Tree) -> list[Path]:
        return [d.parent for d in tree.dirs_named(r"tissue images")
                if any(s.lower() == "label masks modify" for s in tree.subdirs(d.parent))]

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(cls._tissue_dirs(tree))

    def _scan(self):
        tree = Tree(self.root)
        for td in sorted(self._tissue_dirs(tree), key=lambda d: natural_key(str(d))):
            subs = {s.lower(): td / s for s in tree.subdirs(td)}
            images = _image_files(subs["tissue images"])
            labels = _image_files(subs["label masks modify"], (".tif", ".tiff", ".png"))
            for stem, ip, lp in match_by_stem(images, labels, str(td), self._strict):
                yield Entry(stem=stem, paths={"image": ip, "label": lp}, group=td.name.replace(" ", "_"),
                            meta={"tissue": td.name})

    def _read(self, entry: Entry) -> Sample:
        return Sample(entry.stem, read_rgb(entry.paths["image"]), read_instances(entry.paths["label"]))


#: CryoNuSeg annotator folders (torch_em ``rater_choice`` b1/b2/b3).
CRYONUSEG_ANNOTATORS = {
    "b1": "Annotator 1 (biologist)",
    "b2": "Annotator 1 (biologist second round of manual marks up)",
    "b3": "Annotator 2 (bioinformatician)",
}


@register
class CryoNuSegDataset(Dataset):
    """CryoNuSeg (Mahbod et al. 2021; Kaggle ``ipateam/segmentation-of-nuclei-in-cryosectioned-he-images``)::

        tissue images/NAME.tif
        Annotator 1 (biologist)/label masks modify/NAME.tif      instance labels (annotator b1)

    ``annotator=``: ``"b1"`` (default, as the reference), ``"b2"`` (the biologist's second
    round), ``"b3"`` (the bioinformatician), or a folder name. The ``label masks modify`` folder is
    looked for inside the annotator folder at any depth up to 3 (the reference's b2/b3 paths repeat
    the annotator folder name). No official split (the reference draws an unseeded 20 % test /
    15 % val CSV): use :func:`split_names`.
    """

    format = "cryonuseg"
    layout = "tissue images/NAME.tif + Annotator 1 (biologist)/label masks modify/NAME.tif"

    def __init__(self, root, split=None, *, name=None, annotator: str = "b1", strict: bool = True):
        self._annotator = CRYONUSEG_ANNOTATORS.get(str(annotator).lower(), str(annotator))
        self._strict = strict
        super().__init__(root, split, name=name)

    @staticmethod
    def _image_dirs(tree: Tree) -> list[Path]:
        return [d for d in tree.dirs_named(r"tissue images")
                if any(s.lower().startswith("annotator") for s in tree.subdirs(d.parent))]

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return bool(cls._image_dirs(tree))

    def _scan(self):
        tree = Tree(self.root, max_depth=7)
        for idir in self._image_dirs(tree):
            base = idir.parent
            ann = [base / s for s in tree.subdirs(base) if s.lower() == self._annotator.lower()]
            if not ann:
                found = [s for s in tree.subdirs(base) if s.lower().startswith("annotator")]
                raise ValueError(f"{base}: no annotator folder {self._annotator!r}; found: {found}")
            label_dirs = [d for d in tree.dirs_named(r"label masks modify")
                          if d.is_relative_to(ann[0]) and len(d.relative_to(ann[0]).parts) <= 3]
            if not label_dirs:
                raise ValueError(f"{ann[0]}: no 'label masks modify' folder inside")
            label_dir = min(label_dirs, key=lambda d: len(d.parts))
            labels = _image_files(label_dir, (".tif", ".tiff", ".png"))
            for stem, ip, lp in match_by_stem(_image_files(idir), labels, str(base), self._strict):
                yield Entry(stem=stem, paths={"image": ip, "label": lp}, meta={"annotator": self._annotator})

    def _read(self, entry: Entry) -> Sample:
        return Sample(entry.stem, read_rgb(entry.paths["image"]), read_instances(entry.paths["label"]))


# --------------------------------------------------------------------------------------------


@register
class GlaSDataset(Dataset):
    """GlaS (MICCAI 2015 gland segmentation; Warwick-QU)::

        Warwick_QU_Dataset/{train,testA,testB}_N.bmp        RGB
        Warwick_QU_Dataset/{train,testA,testB}_N_anno.bmp   gland instance labels
        Warwick_QU_Dataset/Grade.csv                        optional: benign/malignant grades

    **The objects are glands, not nuclei.** Splits: ``train``, ``testA``, ``testB``; ``test`` =
    testA + testB (the reference's ``test``). ``meta["grade"]`` from Grade.csv when present.
    """

    format = "glas"
    layout = "Warwick_QU_Dataset/{train,testA,testB}_N.bmp + ..._anno.bmp (gland instances)"
    split_aliases = {"test": ("testA", "testB")}

    def __init__(self, root, split=None, *, name=None, strict: bool = True):
        self._strict = strict
        super().__init__(root, split, name=name)

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return any(p.stem.lower().endswith("_anno") for p in tree.files([".bmp"]))

    def _scan(self):
        tree = Tree(self.root)
        dirs = sorted({p.parent for p in tree.files([".bmp"]) if p.stem.lower().endswith("_anno")},
                      key=lambda d: natural_key(str(d)))
        for d in dirs:
            bmps = tree.files_in(d, [".bmp"])
            annos = [p for p in bmps if p.stem.lower().endswith("_anno")]
            images = [p for p in bmps if not p.stem.lower().endswith("_anno")]
            renamed = {p.with_name(p.stem[:-5] + p.suffix): p for p in annos}
            grades = self._grades(d)
            for stem, ip, lp in match_by_stem(images, list(renamed), str(d), self._strict):
                split = stem.split("_")[0] if "_" in stem else None
                meta = {"grade": grades[stem]} if stem in grades else {}
                yield Entry(stem=stem, split=split, paths={"image": ip, "label": renamed[lp]}, meta=meta)

    @staticmethod
    def _grades(d: Path) -> dict[str, str]:
        path = next((p for p in d.iterdir() if p.name.lower() == "grade.csv"), None)
        if path is None:
            return {}
        out = {}
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            return {}
        head = [h.strip().lower() for h in rows[0]]
        col = next((i for i, h in enumerate(head) if "grade" in h), None)
        if col is None or "name" not in head:
            return {}
        name_col = head.index("name")
        for row in rows[1:]:
            if len(row) > max(col, name_col):
                out[row[name_col].strip()] = row[col].strip()
        return out

    def _read(self, entry: Entry) -> Sample:
        lab = read_array(entry.paths["label"])
        if lab.ndim == 3:  # an RGB-saved label image: the ids are in every channel
            lab = lab[..., 0]
        labels = relabel_consecutive(as_integer_labels(lab, str(entry.paths["label"])))
        return Sample(entry.stem, read_rgb(entry.paths["image"]), labels)
