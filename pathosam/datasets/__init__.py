"""Readers for the public nucleus datasets' on-disk formats, and a generic folder format.

>>> from pathosam.datasets import open_dataset
>>> ds = open_dataset("data/monuseg")            # format detected from the layout
>>> sample = ds[0]                               # read from disk on access
>>> sample.image.shape, sample.labels.dtype      # (H, W, 3) uint8, uint32 instance labels

Every reader yields :class:`Sample` objects: ``image`` (H, W, 3) uint8 RGB, ``labels`` (H, W)
uint32 instance labels with ids 1..N (0 = background; stored ids are renumbered, objects
unchanged), ``classes`` (H, W) uint8 (0 = background) with ``class_names`` (index = class id,
``class_names[0] == "background"``) where the format has classes, and ``meta`` (split, source
paths, extras).

Formats (``list_formats()``): ``folder`` (generic images/ + labels/), ``pannuke``, ``lizard``,
``monuseg``, ``consep``, ``consep_tiles`` (the shared data's 256 px CoNSeP tiles), ``cpm``,
``tnbc``, ``puma``, ``nuinsseg``, ``cryonuseg``, ``lynsec``,
``nuclick``, ``srsanet``, ``glas`` (glands, not nuclei). Each reader's docstring gives its layout,
split names and conversion rules. Nothing is downloaded: unpack the dataset's archive and point
:func:`open_dataset` at it.

Helpers: :func:`pad_sample` (the reference's zero padding of small images, top-left or centre),
:func:`split_names` (a seeded train/val/test split; the reference's own split CSVs are unseeded).
"""

from __future__ import annotations

from ._io import read_rgb, relabel_consecutive
# importing the reader modules registers the formats
from .arrays import LyNSeCDataset, NuClickDataset, SRSANetDataset
from .base import Dataset, Entry, Sample, detect_format, get_format, list_formats, open_dataset, register
from .consep_tiles import CoNSePTilesDataset
from .folder import FolderDataset
from .masks import CryoNuSegDataset, GlaSDataset, NuInsSegDataset, TNBCDataset
from .matlab import CoNSePDataset, CPMDataset, LizardDataset
from .pannuke import PanNukeDataset
from .polygon_annotations import PUMA_CLASSES, MoNuSegDataset, PUMADataset
from .transforms import pad_sample, padding_for, split_names, unpad

__all__ = [
    "Sample", "Dataset", "Entry", "open_dataset", "list_formats", "detect_format", "get_format", "register",
    "pad_sample", "unpad", "padding_for", "split_names", "read_rgb", "relabel_consecutive",
    "FolderDataset", "CoNSePTilesDataset", "PanNukeDataset", "LizardDataset", "MoNuSegDataset", "CoNSePDataset",
    "CPMDataset",
    "TNBCDataset", "PUMADataset", "NuInsSegDataset", "CryoNuSegDataset", "LyNSeCDataset", "NuClickDataset",
    "SRSANetDataset", "GlaSDataset", "PUMA_CLASSES",
]
