"""The shared data's CoNSeP conversion: 256 px tiles with a class table per tile."""

from __future__ import annotations

import re

from ._io import IMAGE_SUFFIXES
from .base import Tree, register
from .folder import FolderDataset
from .matlab import CONSEP_MERGED

#: Tile names of the shared data's CoNSeP conversion: consep_<split>_<image>_<tile>.
_CONSEP_TILE = re.compile(r"^consep_(train|test)_(\d+)_(\d+)$")


@register
class CoNSePTilesDataset(FolderDataset):
    """CoNSeP cut into 256 px tiles, the shared data's conversion (``data/consep``)::

        DIR/images/consep_<split>_<image>_<tile>.tif   RGB
        DIR/labels/consep_<split>_<image>_<tile>.tif   instance labels
        DIR/classes/consep_<split>_<image>_<tile>.csv  ``id,class`` per nucleus

    Classes: HoVer-Net's merged CoNSeP scheme (1 other, 2 inflammatory, 3 epithelial,
    4 spindle-shaped), not PanNuke's. The 16 tiles of one source image overlap and share tissue:
    ``meta["source"]`` / :attr:`Dataset.sources` names the source image, so that
    ``split_names(..., groups=ds.sources)`` keeps them on one side of a split.
    """

    format = "consep_tiles"
    layout = "DIR/images/consep_<split>_<image>_<tile>.* + DIR/labels/ + DIR/classes/*.csv"

    def __init__(self, root, split=None, *, name=None, strict: bool = True):
        super().__init__(root, split, name=name, class_names=CONSEP_MERGED[1:], strict=strict)

    @classmethod
    def detect(cls, tree: Tree) -> bool:
        return _is_consep_tiles(tree)

    def _entry_meta(self, stem: str) -> dict:
        m = _CONSEP_TILE.match(stem)
        return {"source": f"{m.group(1)}_{m.group(2)}"} if m else {}


def _is_consep_tiles(tree: Tree) -> bool:
    im = tree.root / "images"
    names = [p.stem for p in tree.files_in(im, IMAGE_SUFFIXES)]
    return (bool(names) and all(_CONSEP_TILE.match(n) for n in names)
            and bool(tree.files_in(tree.root / "classes", (".csv",))))
