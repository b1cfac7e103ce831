"""The generic folder layout (the layout of the shared test data)::

    DIR/images/NAME.{tif,png,jpg,bmp}    RGB image
    DIR/labels/NAME.{tif,png,npy}        instance labels, 0 = background
    DIR/classes/NAME.{tif,png,npy}       optional semantic class map (0 = background), or
    DIR/classes/NAME.csv                 optional class per nucleus: header ``id,class``, one row
                                         per label id of ``labels/NAME`` (ids as stored)

or one such pair of folders per split: ``DIR/<split>/images`` + ``DIR/<split>/labels``, or
``DIR/images/<split>/`` + ``DIR/labels/<split>/`` (torch_em's prepared MoNuSeg/LyNSeC layout).
Images and labels are matched by file stem; unmatched files are an error that lists them.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from ._io import (IMAGE_SUFFIXES, LABEL_SUFFIXES, as_integer_labels, class_map_from_ids, read_array, read_instances,
                  read_rgb, relabel_consecutive)
from .base import Dataset, Entry, Sample, Tree, natural_key, register

#: Per-nucleus class tables (``classes/NAME.csv``) besides the class-map files.
CLASS_SUFFIXES = LABEL_SUFFIXES + (".csv",)


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise ValueError(f"two {what} files with the stem {f.stem!r}: {out[f.stem].name} and {f.name} in {f.parent}")
        out[f.stem] = f
    return out


def _listed(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def match_by_stem(images: list[Path], labels: list[Path], where: str, strict: bool = True
                  ) -> list[tuple[str, Path, Path]]:
    """(stem, image, label) for every stem present in both lists; unmatched files raise
    (``strict``) or are skipped with a warning."""
    im = _by_stem(images, "image")
    lab = _by_stem(labels, "label")
    lonely_im = sorted(set(im) - set(lab), key=natural_key)
    lonely_lab = sorted(set(lab) - set(im), key=natural_key)
    if lonely_im or lonely_lab:
        parts = []
        if lonely_im:
            parts.append(f"{len(lonely_im)} image(s) without a label file: {_listed(lonely_im)}")
        if lonely_lab:
            parts.append(f"{len(lonely_lab)} label file(s) without an image: {_listed(lonely_lab)}")
        msg = f"{where}: images and labels do not match by file name; " + "; ".join(parts)
        if strict:
            raise ValueError(msg)
        warnings.warn(msg + " (skipped)", stacklevel=3)
    return [(s, im[s], lab[s]) for s in sorted(set(im) & set(lab), key=natural_key)]


@register
class FolderDataset(Dataset):
    """Generic ``images/`` + ``labels/`` folder (see the module docstring).

    Options: ``images``, ``labels``, ``classes`` (sub-folder names), ``class_names`` (names of
    class ids 1..K for the optional class maps), ``strict`` (False: skip unmatched files with a
    warning instead of failing). The dataset's name is the folder's name.
    """

    format = "folder"
    layout = "DIR/images/NAME.* + DIR/labels/NAME.{tif,png,npy} (or DIR/<split>/images + labels, or images/<split>/)"

    def __init__(self, root, split=None, *, name=None, images: str = "images", labels: str = "labels",
                 classes: str = "classes", class_names=None, strict: bool = True):
        self._dirs = (images, labels, classes)
        self._strict = strict
        self.class_names = None if class_names is None else ("background", *class_names)
        super().__init__(root, split, name=name)

    def _default_name(self) -> str:
        return self.root.resolve().name

    @classmethod
    def _split_dirs(cls, root: Path, images="images", labels="labels", classes="classes"
                    ) -> list[tuple[str | None, Path, Path, Path]]:
        """(split, image dir, label dir, class dir) for the layouts this reader accepts."""
        out = []
        im, lab = root / images, root / labels
        if im.is_dir() and lab.is_dir():
            if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in im.iterdir()):
                out.append((None, im, lab, root / classes))
            else:
                for sub in sorted(p.name for p in im.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    if (lab / sub).is_dir():
                        out.append((sub, im / sub, lab / sub, root / classes / sub))
        else:
            for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (sub / images).is_dir() and (sub / labels).is_dir():
                    out.append((sub.name, sub / images, sub / labels, sub / classes))
        return out

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        root = tree.root
        for split, im, lab, _ in cls._split_dirs(root):
            if tree.files_in(im, IMAGE_SUFFIXES) and tree.files_in(lab, LABEL_SUFFIXES):
                return True
        return False

    def _scan(self):
        images, labels, classes = self._dirs
        pairs = self._split_dirs(self.root, images, labels, classes)
        if not pairs:
            raise ValueError(
                f"{self.root}: no '{images}' and '{labels}' folders (nor <split>/{images} + <split>/{labels}); "
                f"expected layout: {self.layout}"
            )
        for split, im_dir, lab_dir, cls_dir in pairs:
            ims = [p for p in sorted(im_dir.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")]
            labs = [p for p in sorted(lab_dir.iterdir()) if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES
                    and not p.name.startswith(".")]
            cls_files = {}
            if cls_dir.is_dir():
                cls_files = _by_stem([p for p in sorted(cls_dir.iterdir()) if p.is_file()
                                      and p.suffix.lower() in CLASS_SUFFIXES and not p.name.startswith(".")], "class")
            for stem, ip, lp in match_by_stem(ims, labs, str(lab_dir.parent if split is None else self.root),
                                              self._strict):
                paths = {"image": ip, "label": lp}
                if cls_dir.is_dir():
                    if stem not in cls_files:
                        raise ValueError(f"{cls_dir}: no class map for {stem!r} (the folder exists, so every image needs one)")
                    paths["classes"] = cls_files[stem]
                yield Entry(stem=stem, split=split, paths=paths, meta=self._entry_meta(stem))

    def _entry_meta(self, stem: str) -> dict:
        return {}

    def _read(self, entry: Entry) -> Sample:
        image = read_rgb(entry.paths["image"])
        classes = None
        cp = entry.paths.get("classes")
        if cp is not None and cp.suffix.lower() == ".csv":  # a class per stored label id
            stored = as_integer_labels(read_array(entry.paths["label"]), str(entry.paths["label"]))
            classes = class_map_from_ids(stored, *read_class_table(cp), str(cp), require_all=True)
            labels = relabel_consecutive(stored)
        else:
            labels = read_instances(entry.paths["label"])
            if cp is not None:  # a class map
                c = as_integer_labels(read_array(cp), str(cp))
                if c.size and c.max() > 255:
                    raise ValueError(f"{cp}: class ids above 255")
                classes = c.astype("uint8")
        if labels.shape != image.shape[:2]:
            raise ValueError(
                f"{entry.paths['label']}: label shape {labels.shape} differs from the image shape {image.shape[:2]} "
                f"({entry.paths['image'].name})"
            )
        return Sample(entry.stem, image, labels, classes, self.class_names if classes is not None else None)


def read_class_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, class ids) of a per-nucleus class table (CSV with columns ``id,class``)."""
    ids, classes = [], []
    try:
        with open(path, newline="") as f:
            rows = csv.DictReader(f)
            if rows.fieldnames is None or not {"id", "class"} <= set(rows.fieldnames):
                raise ValueError(f"{path}: a class table needs the columns 'id' and 'class', got {rows.fieldnames}")
            for n, row in enumerate(rows, start=2):
                try:
                    ids.append(int(row["id"]))
                    classes.append(int(row["class"]))
                except (TypeError, ValueError):
                    raise ValueError(f"{path}, line {n}: id and class must be whole numbers") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the class table ({exc})") from exc
    return np.array(ids, np.int64), np.array(classes, np.int64)
