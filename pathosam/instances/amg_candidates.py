"""The expensive stage of AMG (:mod:`pathosam.instances.amg`): the point grid of every crop through
SAM's prompt encoder and mask decoder, stability scores, and the masks passing the pre-filters
kept as :class:`~.amg_records.MaskCandidates`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .amg_boxes import _masks_to_boxes_torch, is_box_near_crop_edge
from .amg_filter import _passes
from .amg_grid import _crop_boxes, point_grid
from .amg_records import MaskCandidates, MaskRecord
from .params import AMG_DEFAULTS

if TYPE_CHECKING:  # pragma: no cover
    from ..embeddings import ImageEmbeddings
    from ..predictor import PathoSAM

__all__ = ["generate_mask_candidates", "stability_score"]

#: Rough budget (bytes) for the float logits of one chunk of upsampled masks.
_CHUNK_BYTES = 128 * 2**20


def stability_score(logits, threshold: float = 0.0, offset: float = AMG_DEFAULTS.stability_score_offset):
    """Stability score of mask logits: IoU of ``logits > threshold + offset`` and ``> threshold - offset``.

    Parameters
    ----------
    logits : torch.Tensor or numpy.ndarray
        (..., H, W) mask logits.
    threshold : float
        Mask threshold (SAM: 0).
    offset : float
        Threshold offset (reference default 1.0).

    Returns
    -------
    torch.Tensor or numpy.ndarray
        float32 (...) scores, the same kind as the input. The high mask lies inside the low one, so
        this is ``count(high) / count(low)`` (NaN when both are empty, as in the reference).
    """
    is_numpy = not torch.is_tensor(logits)
    x = torch.as_tensor(np.asarray(logits)) if is_numpy else logits
    inter = (x > (threshold + offset)).sum(dim=(-2, -1), dtype=torch.int32)
    union = (x > (threshold - offset)).sum(dim=(-2, -1), dtype=torch.int32)
    score = inter.to(torch.float32) / union.to(torch.float32)
    return score.numpy() if is_numpy else score


@torch.inference_mode()
def generate_mask_candidates(
    model: "PathoSAM",
    emb: "ImageEmbeddings",
    points_per_side: int = AMG_DEFAULTS.points_per_side,
    points_per_batch: int = AMG_DEFAULTS.points_per_batch,
    pred_iou_thresh: float = AMG_DEFAULTS.pred_iou_thresh,
    stability_score_thresh: float = AMG_DEFAULTS.stability_score_thresh,
    stability_score_offset: float = AMG_DEFAULTS.stability_score_offset,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> MaskCandidates:
    """Run the point grid through SAM on every crop and keep the masks passing the pre-filters.

    This is the expensive stage (micro-sam's ``initialize``). Masks failing the predicted-IoU or
    stability pre-filter, or touching an interior crop edge (within 20 px), are dropped right
    away; pass lower pre-filter thresholds (down to 0 = keep all) to filter later with several
    settings via :func:`filter_masks`.

    Parameters
    ----------
    model : PathoSAM
        The model (its ``sam`` prompt encoder and mask decoder are used).
    emb : ImageEmbeddings
        Untiled (one crop = the image) or tiled (one crop per tile outer block) embeddings.
    points_per_side : int
        Grid points per side of each crop.
    points_per_batch : int
        Points per mask-decoder batch (the reference's 64 by default). The mask decoder's memory grows with
        it: on CPU about 21 MB per point (64 -> ~1.3 GB peak, 16 -> ~0.35 GB); upsampling and
        thresholding are chunked separately (~128 MB). The decoder's float results depend on the
        batch size at the 1e-6 level, so masks at a threshold's edge may differ between sizes.
    pred_iou_thresh : float
        Pre-filter: keep predicted IoU ``>`` this (0 disables it).
    stability_score_thresh : float
        Pre-filter: keep stability ``>=`` this (0 disables it).
    stability_score_offset : float
        Logit offset of the stability score.
    progress : bool
        Show a tqdm bar over point batches.
    on_batch : callable, optional
        Called after each point batch with (batches done, total batches); it may raise to stop
        (cooperative cancellation: time limits, clients gone).

    Returns
    -------
    MaskCandidates
        Per-crop records; points (x, y) and boxes (x0, y0, x1, y1 inclusive) in full-image pixels.
    """
    from tqdm.auto import tqdm

    from ..image import transform_coords
    from ..models.sam import IMG_SIZE, Sam

    if points_per_batch < 1:
        raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
    grid = point_grid(points_per_side)
    H, W = (int(s) for s in emb.image_shape)
    crop_boxes = _crop_boxes(emb)
    sam = model.sam
    dev = model.device
    size = getattr(sam, "img_size", IMG_SIZE)  # model input size (SAM's 1024; stand-ins may lack it)
    dense_pe = sam.prompt_encoder.get_dense_pe()
    n_batches = math.ceil(len(grid) / points_per_batch)
    bar = tqdm(total=n_batches * len(crop_boxes), desc="AMG point batches", disable=not progress)
    crops: list[list[MaskRecord]] = []
    for i, crop_box in enumerate(crop_boxes):
        cx0, cy0 = crop_box[0], crop_box[1]
        h, w = (int(s) for s in emb.original_sizes[i])
        in_size = tuple(int(s) for s in emb.input_sizes[i])
        per_mask = 4 * (size * size + in_size[0] * in_size[1] + 2 * h * w)
        chunk = max(1, _CHUNK_BYTES // per_mask)
        feats = torch.from_numpy(np.ascontiguousarray(emb.feature(i), dtype=np.float32)).to(dev)
        points = grid * np.array([[w, h]], dtype=np.float64)  # crop pixels (x, y)
        records: list[MaskRecord] = []
        for start in range(0, len(points), points_per_batch):
            pts = points[start : start + points_per_batch]
            coords = torch.as_tensor(transform_coords(pts, (h, w), size), dtype=torch.float32,
                                     device=dev)[:, None, :]
            labels = torch.ones((len(pts), 1), dtype=torch.int64, device=dev)
            sparse, dense = sam.prompt_encoder((coords, labels), None, None)
            low_res, iou = sam.mask_decoder(feats, dense_pe, sparse, dense, multimask_output=True)
            n_out = low_res.shape[1]
            low_res = low_res.reshape(-1, 1, *low_res.shape[-2:])  # point-major: p0m0, p0m1, ...
            iou_np = iou.reshape(-1).float().cpu().numpy()
            for c0 in range(0, low_res.shape[0], chunk):
                logits = Sam.postprocess_masks(low_res[c0 : c0 + chunk], in_size, (h, w), size)[:, 0]
                stab = stability_score(logits, 0.0, stability_score_offset).cpu().numpy()
                keep = _passes(iou_np[c0 : c0 + len(logits)], stab, pred_iou_thresh, stability_score_thresh)
                if not keep.any():
                    continue
                idx = np.nonzero(keep)[0]
                binary = logits[torch.as_tensor(idx, device=logits.device)] > 0.0
                del logits
                local = _masks_to_boxes_torch(binary).cpu().numpy()
                glob = local + np.array([cx0, cy0, cx0, cy0], dtype=np.int64)
                ok = ~is_box_near_crop_edge(glob, crop_box, (H, W))
                for j in np.nonzero(ok)[0]:
                    lx0, ly0, lx1, ly1 = (int(v) for v in local[j])
                    m = binary[j, ly0 : ly1 + 1, lx0 : lx1 + 1].cpu().numpy()
                    k = c0 + int(idx[j])
                    p = pts[k // n_out]
                    records.append(MaskRecord.from_crop(
                        m, glob[j], iou_np[k], stab[idx[j]], crop_box, (float(p[0] + cx0), float(p[1] + cy0))
                    ))
            bar.update(1)
            if on_batch is not None:
                on_batch(i * n_batches + start // points_per_batch + 1, n_batches * len(crop_boxes))
        crops.append(records)
    bar.close()
    return MaskCandidates(crops, crop_boxes, (H, W), float(pred_iou_thresh), float(stability_score_thresh),
                          float(stability_score_offset))
