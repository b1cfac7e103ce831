"""Datasets annotated with polygons, rasterised here: MoNuSeg (Aperio XML) and PUMA (GeoJSON).

Rasterisation (both): :func:`skimage.draw.polygon`, a pixel belongs to a polygon when its
centre lies inside; polygons are painted in file order, so **where polygons overlap the later one
wins** (an earlier object can lose pixels, or vanish when fully covered); polygons with fewer
than 3 vertices or without any pixel are dropped; ids are then renumbered 1..N in painting order.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ._io import IMAGE_SUFFIXES, polygon_pixels, read_rgb, relabel_consecutive
from .base import Dataset, Entry, Sample, Tree, natural_key, register
from .folder import match_by_stem


def _split_from_parts(parts) -> str | None:
    for part in reversed(list(parts)):
        p = part.lower()
        if "train" in p:
            return "train"
        if "test" in p:
            return "test"
    return None


def read_aperio_xml(path: str | Path) -> list[np.ndarray]:
    """Polygons of an Aperio ImageScope XML: one (N, 2) array of (X, Y) vertices per ``<Region>``,
    in file order."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not a valid XML file ({exc})") from exc
    polys = []
    for region in root.iter("Region"):
        pts = []
        for v in region.iter("Vertex"):
            try:
                pts.append((float(v.get("X")), float(v.get("Y"))))
            except (TypeError, ValueError):
                raise ValueError(f"{path}: a <Vertex> without numeric X/Y attributes") from None
        polys.append(np.asarray(pts, dtype=np.float64).reshape(-1, 2))
    return polys


def rasterise_xy_polygons(polys: list[np.ndarray], shape: tuple[int, int], offset: float = 0.0) -> np.ndarray:
    """Instance labels (uint32, ids 1..N in painting order) from (X, Y) polygons; later wins.

    Vertex (X, Y) maps to (row, col) = (Y - offset, X - offset) in :func:`skimage.draw.polygon`'s
    frame, in which pixel (r, c) is the point (r, c).
    """
    lab = np.zeros(shape, np.int64)
    k = 0
    for xy in polys:
        if len(xy) < 3:
            continue
        rr, cc = polygon_pixels([(np.c_[xy[:, 1] - offset, xy[:, 0] - offset], [])], shape)
        if rr.size == 0:
            continue
        k += 1
        lab[rr, cc] = k
    return relabel_consecutive(lab)


@register
class MoNuSegDataset(Dataset):
    """MoNuSeg (Kumar et al.) as released: H&E ``.tif`` tiles + Aperio XML annotations::

        MoNuSeg 2018 Training Data/Tissue Images/NAME.tif + .../Annotations/NAME.xml
        MoNuSegTestData/NAME.tif + MoNuSegTestData/NAME.xml

    Each XML is paired with the image of the same stem in its own folder or in a sibling folder
    whose name contains "image". Every ``<Region>`` is one nucleus; its ``<Vertex X= Y=>`` list
    is filled with ``skimage.draw.polygon`` with X -> column and Y -> row (no half-pixel shift),
    later regions winning on overlap (see the module docstring). This is the reference's rule
    (torch_em ``generate_labeled_array_from_xml``) and the rule used to make the shared
    ``data/monuseg`` labels. Splits ``train`` / ``test`` from folder names containing
    "train"/"test". (torch_em's prepared layout ``images/<split>`` + ``labels/<split>`` is the
    ``folder`` format.)
    """

    format = "monuseg"
    layout = "NAME.tif + NAME.xml (Aperio <Region>/<Vertex>), same folder or Tissue Images/ + Annotations/"

    def __init__(self, root, split=None, *, name=None, strict: bool = True):
        self._strict = strict
        super().__init__(root, split, name=name)

    @staticmethod
    def _pairs(tree: Tree, root: Path, strict: bool):
        xml_dirs = sorted({p.parent for p in tree.files([".xml"])}, key=lambda d: natural_key(str(d)))
        for d in xml_dirs:
            xmls = tree.files_in(d, [".xml"])
            image_dirs = [d] + [d.parent / s for s in tree.subdirs(d.parent) if "image" in s.lower() and d.parent / s != d]
            images = [p for idir in image_dirs for p in tree.files_in(idir, IMAGE_SUFFIXES)]
            # prefer .tif when an image exists in several formats
            by_stem: dict[str, Path] = {}
            for p in sorted(images, key=lambda p: p.suffix.lower() not in (".tif", ".tiff")):
                by_stem.setdefault(p.stem, p)
            xml_stems = {x.stem for x in xmls}
            images = [p for s, p in by_stem.items() if s in xml_stems or d != p.parent]
            if not any(p.stem in xml_stems for p in images):
                continue
            yield d, match_by_stem(images, xmls, str(d), strict)

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        try:
            for _, pairs in cls._pairs(tree, tree.root, strict=False):
                if pairs:  # an Aperio-style file has <Region> elements
                    with open(pairs[0][2], "rb") as fh:
                        return b"<Region" in fh.read(1 << 20)
        except (OSError, ValueError):
            return False
        return False

    def _scan(self):
        tree = Tree(self.root)
        for d, pairs in self._pairs(tree, self.root, self._strict):
            split = _split_from_parts([self.root.name, *d.relative_to(self.root).parts])
            for stem, ip, xp in pairs:
                yield Entry(stem=stem, split=split, paths={"image": ip, "annotation": xp})

    def _read(self, entry: Entry) -> Sample:
        image = read_rgb(entry.paths["image"])
        polys = read_aperio_xml(entry.paths["annotation"])
        labels = rasterise_xy_polygons(polys, image.shape[:2])
        return Sample(entry.stem, image, labels)


# --------------------------------------------------------------------------------------------

#: PUMA nucleus classes in the reference's id order (torch_em puma.py ``CLASS_DICT``).
PUMA_CLASSES = ("nuclei_stroma", "nuclei_tumor", "nuclei_plasma_cell", "nuclei_histiocyte", "nuclei_lymphocyte",
                "nuclei_melanophage", "nuclei_neutrophil", "nuclei_endothelium", "nuclei_epithelium",
                "nuclei_apoptosis")


def _geojson_features(obj, path) -> list[dict]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if obj.get("type") == "FeatureCollection":
            return list(obj.get("features", []))
        if obj.get("type") == "Feature":
            return [obj]
    raise ValueError(f"{path}: not a GeoJSON FeatureCollection, Feature or list of features")


def _class_name(props: dict) -> str | None:
    c = props.get("classification")
    if isinstance(c, str):
        try:
            c = json.loads(c)
        except json.JSONDecodeError:
            return c
    if isinstance(c, dict):
        return c.get("name")
    return props.get("name") if isinstance(props.get("name"), str) else None


def geometry_parts(geom: dict) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """[(exterior, holes)] of a GeoJSON Polygon/MultiPolygon as (N, 2) (x, y) arrays; [] for others."""
    kind = geom.get("type") if geom else None
    if kind == "Polygon":
        polys = [geom["coordinates"]]
    elif kind == "MultiPolygon":
        polys = geom["coordinates"]
    elif kind == "GeometryCollection":
        return [p for g in geom.get("geometries", []) for p in geometry_parts(g)]
    else:
        return []
    out = []
    for rings in polys:
        if not rings:
            continue
        arrs = [np.asarray(r, dtype=np.float64).reshape(-1, np.asarray(r).shape[-1])[:, :2] for r in rings]
        out.append((arrs[0], arrs[1:]))
    return out


@register
class PUMADataset(Dataset):
    """PUMA (melanoma H&E; Schuiveling et al.): ROI TIFFs + GeoJSON nucleus polygons::

        01_training_dataset_tif_ROIs/training_set_{metastatic,primary}_roi_NNN.tif   1024x1024 RGBA
        01_training_dataset_geojson_nuclei/training_set_..._roi_NNN_nuclei.geojson

    (``*_tissue.geojson`` files are ignored.) Coordinates: GeoJSON (x, y) in pixels of the ROI,
    x -> column, y -> row (downwards), origin at the top-left **corner** of the top-left pixel
    (QuPath's convention: pixel (r, c) covers x in [c, c+1), y in [r, r+1)). A pixel belongs to a
    nucleus when its centre (c + 0.5, r + 0.5) lies inside the polygon, i.e. vertices are shifted
    by ``pixel_offset=0.5`` before :func:`skimage.draw.polygon`; a polygon traced along pixel
    edges (as QuPath exports masks) comes back as exactly those pixels. Holes are cut out,
    MultiPolygon parts form one nucleus, later features win on overlap.
    Classes: ``properties.classification.name`` -> id by ``class_names`` (default
    :data:`PUMA_CLASSES`, the reference's ids 1..10); an unknown name is an error.
    Splits: ``metastatic`` / ``primary`` (from the file name). The reference splits randomly
    (CSV, 20 % test / 15 % val per group); use :func:`split_names` for a seeded split.

    The reference rasterises differently (rasterio with ``from_bounds`` of the polygons' total
    bounds onto the 1024 grid, then flips): that maps the annotations' bounding box, not the ROI,
    onto the image, which can stretch labels against the image; pixel coordinates are used here.
    """

    format = "puma"
    layout = "NAME.tif (RGBA ROI) + NAME_nuclei.geojson (polygons with classification names)"

    def __init__(self, root, split=None, *, name=None, class_names=None, pixel_offset: float = 0.5,
                 strict: bool = True):
        names = PUMA_CLASSES if class_names is None else tuple(class_names)
        self.class_names = ("background", *names)
        self._ids = {n: i + 1 for i, n in enumerate(names)}
        self._ids_lower = {n.lower(): i + 1 for i, n in enumerate(names)}
        self._offset = float(pixel_offset)
        self._strict = strict
        super().__init__(root, split, name=name)

    @staticmethod
    def _annotation_stem(p: Path) -> str | None:
        stem = p.name[: -len(".geojson")]
        low = stem.lower()
        if low.endswith("_tissue"):
            return None
        return stem[: -len("_nuclei")] if low.endswith("_nuclei") else stem

    @classmethod
    def _candidates(cls, tree: Tree):
        anns = {}
        for p in tree.files([".geojson"]):
            s = cls._annotation_stem(p)
            if s is not None:
                anns.setdefault(s, []).append(p)
        tifs = [p for p in tree.files([".tif", ".tiff"])]
        return anns, tifs

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        anns, tifs = cls._candidates(tree)
        return any(p.stem in anns for p in tifs)

    def _scan(self):
        tree = Tree(self.root)
        anns, tifs = self._candidates(tree)
        for s, ps in anns.items():
            if len(ps) > 1:
                raise ValueError(f"{self.root}: several nucleus annotation files for {s!r}: {[str(p) for p in ps]}")
        # pair by stem; annotation files are renamed to the image stem for matching
        fake = {s: ps[0] for s, ps in anns.items()}
        ann_paths = [ps[0].with_name(s + ".geojson") for s, ps in anns.items()]
        for stem, ip, ap in match_by_stem(tifs, ann_paths, str(self.root), self._strict):
            low = stem.lower()
            split = "metastatic" if "metastatic" in low else "primary" if "primary" in low else None
            yield Entry(stem=stem, split=split, paths={"image": ip, "annotation": fake[stem]})

    def _class_id(self, name: str | None, path: Path) -> int:
        if name is not None:
            cid = self._ids.get(name) or self._ids_lower.get(name.lower())
            if cid:
                return cid
        raise ValueError(
            f"{path}: nucleus class {name!r} is not one of {list(self._ids)}; pass class_names=[...] to open_dataset"
        )

    def _read(self, entry: Entry) -> Sample:
        image = read_rgb(entry.paths["image"])
        ap = entry.paths["annotation"]
        try:
            obj = json.loads(Path(ap).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{ap}: cannot read the GeoJSON ({exc})") from exc
        shape = image.shape[:2]
        lab = np.zeros(shape, np.int64)
        classes = np.zeros(shape, np.uint8)
        k = 0
        skipped = 0
        o = self._offset
        for feat in _geojson_features(obj, ap):
            parts = geometry_parts(feat.get("geometry") or {})
            if not parts:
                skipped += 1
                continue
            cid = self._class_id(_class_name(feat.get("properties") or {}), ap)
            rc = [(np.c_[ext[:, 1] - o, ext[:, 0] - o], [np.c_[h[:, 1] - o, h[:, 0] - o] for h in holes])
                  for ext, holes in parts]
            rr, cc = polygon_pixels(rc, shape)
            if rr.size == 0:
                continue
            k += 1
            lab[rr, cc] = k
            classes[rr, cc] = cid
        if skipped:
            warnings.warn(f"{ap}: {skipped} feature(s) without polygon geometry skipped", stacklevel=2)
        return Sample(entry.stem, image, relabel_consecutive(lab), classes, self.class_names)
