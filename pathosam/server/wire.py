"""Request bodies of the SAM-API wire protocol (samapi v0.7.1, as qupath-extension-sam v0.9.1 sends them).

Parsing is as lenient as samapi's pydantic-v1 models: unknown fields are ignored, every optional
field defaults to null, numbers given as floats where samapi declares ints are truncated toward
zero (``30.7`` -> ``30``), an unknown ``type`` or a missing ``b64img`` is a 422 with FastAPI's
``{"detail": [...]}`` body. Prompt coordinates are pixels of the sent image: points ``[x, y]``,
boxes ``[x0, y0, x1, y1]`` (x = column, y = row, origin top-left).

Beyond samapi, values the server could not use are refused here with 422 instead of failing
later: integers outside the 32-bit range (coordinates, labels, counts), NaN / infinite floats,
text that is not valid Unicode (lone surrogates, which JSON's ``\ud800`` escapes allow), and
URLs / names with control characters (e.g. ``%00`` is fine, a raw NUL is not) or over 4096 / 200
characters.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from ..instances.params import AMG_DEFAULTS

__all__ = [
    "DEFAULT_CHECKPOINT_URLS", "OUTPUT_TYPES", "ModelType", "SAMAutoMaskBody", "SAMBody", "SAMWeightsBody",
]


class ModelType(str, Enum):
    """samapi's model types, in its enum order (the ``type`` field)."""

    vit_h = "vit_h"
    vit_l = "vit_l"
    vit_b = "vit_b"
    vit_t = "vit_t"
    sam2_l = "sam2_l"
    sam2_bp = "sam2_bp"
    sam2_s = "sam2_s"
    sam2_t = "sam2_t"
    sam3 = "sam3"


#: samapi's default checkpoint URL per type (its ``default`` weights).
DEFAULT_CHECKPOINT_URLS: dict[str, str] = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_t": "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
    "sam2_l": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt",
    "sam2_bp": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_base_plus.pt",
    "sam2_s": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_small.pt",
    "sam2_t": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_tiny.pt",
    "sam3": "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt",
}

#: ``output_type`` strings of the extension's automask tab (the MobileSAM fork's), plus samapi's
#: own default ``"Single Mask"`` (sic), which is treated as ``"Single mask"``.
OUTPUT_TYPES = ("Single mask", "Multi-mask (all)", "Multi-mask (largest)", "Multi-mask (smallest)",
                "Multi-mask (best quality)")


def _truncate(value: Any) -> Any:
    """pydantic-v1 int coercion: a finite float becomes ``int(value)`` (toward zero)."""
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return value


def _unicode(value: str) -> str:
    """Refuse text that cannot be encoded (lone surrogates from ``\ud800``-style JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return value


def _printable(value: str) -> str:
    """Refuse control characters (NUL, newlines, ...) in URLs and names."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("control characters are not allowed")
    return value


_INT32 = 2**31
#: An int of the wire (coordinates, labels, counts): floats truncated, 32-bit range.
LenientInt = Annotated[int, BeforeValidator(_truncate), Field(ge=-_INT32, lt=_INT32)]
Point = Annotated[list[LenientInt], Field(min_length=2, max_length=2)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[str, AfterValidator(_unicode)]
Url = Annotated[str, AfterValidator(_unicode), AfterValidator(_printable), Field(max_length=4096)]

_LENIENT = ConfigDict(extra="ignore", protected_namespaces=())


class SAMBody(BaseModel):
    """``POST /sam/``: one prompted segmentation (fields in the extension's order)."""

    model_config = _LENIENT

    type: ModelType = ModelType.vit_h
    bbox: list[LenientInt] | None = None
    b64img: Text
    b64mask: str | None = None
    point_coords: list[Point] | None = None
    point_labels: list[LenientInt] | None = None
    multimask_output: bool = False
    checkpoint_url: Url | None = None


class SAMAutoMaskBody(BaseModel):
    """``POST /sam/automask/``: automatic segmentation of the whole sent image (samapi's defaults,
    which are SAM's: :data:`pathosam.instances.params.AMG_DEFAULTS`)."""

    model_config = _LENIENT

    type: ModelType = ModelType.vit_h
    b64img: Text
    points_per_side: LenientInt | None = Field(AMG_DEFAULTS.points_per_side, ge=1, le=64)
    points_per_batch: LenientInt = Field(AMG_DEFAULTS.points_per_batch, ge=1, le=1024)
    pred_iou_thresh: Finite = AMG_DEFAULTS.pred_iou_thresh
    stability_score_thresh: Finite = AMG_DEFAULTS.stability_score_thresh
    stability_score_offset: Finite = AMG_DEFAULTS.stability_score_offset
    box_nms_thresh: Finite = AMG_DEFAULTS.box_nms_thresh
    crop_n_layers: LenientInt = Field(0, ge=0)
    crop_nms_thresh: Finite = AMG_DEFAULTS.crop_nms_thresh
    crop_overlap_ratio: Finite = 512 / 1500
    crop_n_points_downscale_factor: LenientInt = 1
    min_mask_region_area: LenientInt = Field(AMG_DEFAULTS.min_mask_region_area, ge=0)
    output_type: Annotated[Text, Field(max_length=100)] = "Single Mask"
    include_image_edge: bool = False
    checkpoint_url: Url | None = None


class SAMWeightsBody(BaseModel):
    """``POST /sam/weights/``: register weights by URL under a name (all fields required)."""

    model_config = _LENIENT

    type: ModelType
    name: Annotated[str, AfterValidator(_unicode), AfterValidator(_printable), Field(min_length=1, max_length=200),
                    BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)]
    url: Annotated[Url, Field(min_length=1)]
