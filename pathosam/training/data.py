"""Training data pipeline: random patches with rejection sampling, padding, augmentation.

Input is any ``Sequence`` of samples with the attributes ``name`` (str), ``image`` ((H, W, 3) uint8
RGB), ``labels`` ((H, W) integer instances, 0 = background) and ``classes`` ((H, W) uint8 semantic
map or ``None``) — e.g. what :func:`pathosam.datasets.open_dataset` returns, or a plain list.

What each patch goes through (reference behaviour = torch_em ``SegmentationDataset`` /
``ImageCollectionDataset`` as used by the PathoSAM training scripts):

1. **Image choice**: uniformly at random (or in proportion to ``sample_weights``, see
   :func:`~pathosam.training.class_balance.class_balanced_weights`), or ``index % len(dataset)``
   with ``image_choice="index"``.
2. **Crop**: a ``patch_shape`` window with a uniformly drawn top-left corner (every valid position,
   the last one included). An axis shorter than the patch starts at 0.
3. **Padding** (:func:`~pathosam.training.crops.ensure_patch_shape`): images smaller than the
   patch are padded with zeros at the **end** of each axis (bottom / right) — image, instance
   labels and the semantic map alike (so PanNuke's 256x256 tiles train as the top-left block of a
   black 512x512 canvas, whose padding is background / class 0).
4. **Rejection** (:class:`~pathosam.training.crops.MinInstanceSampler`): the padded label crop
   must hold at least ``min_num_instances`` distinct ids with ``>= min_size`` pixels, **background
   id 0 included** (the reference's counting, so ``min_num_instances=4`` means >= 3 objects when
   there is background). The check runs on the labels as cropped, before relabelling. Up to
   ``max_tries`` crops of the same image are drawn (reference: 500); then ``on_failure`` decides
   (the reference raises).
5. **Stain jitter** (optional, off by default, not in the reference):
   :class:`~pathosam.training.stain.HEDJitter` on the cropped image before padding, so the padding
   stays exactly 0.
6. **Relabelling** (on by default): connected components of each id (8-connectivity, as
   ``skimage.measure.label``), components smaller than ``min_object_size`` (default 10) removed,
   ids renumbered 1..N. This is what the reference's target transform
   (``PerObjectDistanceTransform(apply_label=True, min_size=10)``) does to the label patch before
   the distance targets are computed; it is idempotent, so target code may repeat it.
7. **Optional label transform** (``label_transform``), e.g. the distance targets: applied to the
   relabelled (H, W) patch *before* augmentation, as in the reference.
   With ``scale_range`` (off by default, not in the reference) the window cropped in steps 2-5
   is ``round(patch_shape / s)`` pixels, ``s`` log-uniform in the range, and is resized to
   ``patch_shape`` before step 6 (image bilinear, labels and classes nearest), so nuclei appear
   ``s`` times their size.
8. **Augmentation**: random horizontal flip then random vertical flip, p = 0.5 each (the
   reference's kornia default for 2-D, applied to image and targets alike); optional random 90°
   rotations (``rotate90=True``, not in the reference; k in {0, 2} for non-square patches).
9. **Tensors**: a dict (collates with the default ``DataLoader`` collate)

   - ``"image"``: float32 (3, H, W), raw 0..255 RGB, no normalisation (the reference's
     ``sam_training.identity`` / ``histopathology_identity`` raw transform; the model normalises);
   - ``"labels"``: (1, H, W) instances (or (C, H, W) from ``label_transform``), ``label_dtype``
     (default float32, the reference's ``label_dtype``);
   - ``"semantic"``: int64 (H, W) class map (only with ``with_semantic=True``);
   - ``"sample_index"``: int, index of the source sample;
   - ``"origin"``: int64 (2,), top-left corner of the crop in the source image;
   - ``"transform"``: int64 (3,), ``[hflip, vflip, k_rot90]`` as applied (flips first, then
     ``rot90(k)`` in the (H, W) plane).
   - ``"window"``: int64 (2,), source window (height, width) before resizing (only with
     ``scale_range``).

Determinism: patch ``k`` of epoch (or iteration counter) ``i`` is a pure function of
``(seed, i, k)`` — every random draw comes from a ``numpy.random.Generator`` seeded with
``SeedSequence([seed, i, k])``; no global RNG state is read. The same patches therefore come out
whatever the number of ``DataLoader`` workers, their order, or a restart in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .crops import MinInstanceSampler, crop, ensure_patch_shape, random_crop_origin, relabel_instances, zoom
from .stain import HEDJitter

__all__ = ["EpochIndexSampler", "SampleLike", "TrainingPatches"]


class SampleLike(Protocol):
    """What the training data reads from a sample (e.g. :func:`pathosam.datasets.open_dataset`'s)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {img.shape}")
    return img[..., :3]


class TrainingPatches(Dataset):
    """Map-style torch ``Dataset`` of random training patches (see the module docstring).

    ``len(patches)`` is ``n_samples`` patches per epoch; ``patches[k]`` is patch k of the current
    epoch (:meth:`set_epoch`); ``patches[(i, k)]`` is patch k of epoch i, whatever the current epoch.
    Both are pure functions of ``(seed, i, k)`` (:meth:`patch`).

    Parameters
    ----------
    dataset : Sequence of samples
        Samples with ``.image``, ``.labels``, ``.classes`` (see the module docstring).
    patch_shape : tuple of int
        Patch (height, width); 512x512 as the reference.
    n_samples : int, optional
        Patches per epoch; default ``len(dataset)``.
    seed : int
        Base seed.
    sampler : callable or None
        Rejection criterion ``sampler(label_patch, rng) -> bool``; default
        ``MinInstanceSampler(min_num_instances=4, min_size=10)`` (the reference's training sampler);
        None accepts every crop.
    sampler_target : {"labels", "classes"}
        Which map the sampler sees (the reference's semantic training applies
        ``MinInstanceSampler(2)`` to the class map).
    max_tries : int
        Crops tried per image before ``on_failure`` (reference: 500).
    on_failure : {"best", "raise", "resample"}
        ``"best"``: keep the tried crop with the highest ``sampler.count`` (the latest among
        ties, so the last crop for samplers without ``count``); ``"raise"``: ``RuntimeError`` (the
        reference); ``"resample"``: move on to another, not yet tried image (each image at most
        once), then ``"best"`` over all crops tried.
    flips : bool
        Random horizontal and vertical flips, p = 0.5 each (the reference's augmentation).
    rotate90 : bool
        Also random ``rot90`` (not in the reference).
    stain_jitter : HEDJitter or None
        Optional HED stain jitter (not in the reference).
    scale_range : (float, float) or None
        Optional random zoom (not in the reference): each patch shows a window of
        ``round(patch_shape / s)`` source pixels resized to ``patch_shape``, ``s`` drawn
        log-uniformly from ``[min, max]`` (e.g. ``(0.8, 1.5)``).
    relabel : bool
        Connected-components relabelling of the label patch (see :func:`~pathosam.training.crops.relabel_instances`).
    min_object_size : int
        Components smaller than this are removed when relabelling (reference: 10).
    with_semantic : bool
        Also return the class map (``"semantic"``); every sample then needs ``.classes``.
    label_dtype : torch.dtype
        dtype of ``"labels"`` (reference: float32; exact for ids < 2**24).
    label_transform : callable, optional
        ``f((H, W) uint32 labels) -> (H, W) or (C, H, W) array``, applied before augmentation.
    sample_weights : array-like, optional
        Probability weights of the samples for the random image choice
        (see :func:`~pathosam.training.class_balance.class_balanced_weights`); uniform when None.
    image_choice : {"random", "index"}
        ``"random"``: image drawn per patch (uniform or by ``sample_weights``); ``"index"``: patch
        k uses sample ``k % len(dataset)`` (for external samplers such as ``WeightedRandomSampler``).
    """

    def __init__(
        self,
        dataset: Sequence[SampleLike],
        patch_shape: tuple[int, int] = (512, 512),
        *,
        n_samples: int | None = None,
        seed: int = 0,
        sampler: Callable[..., bool] | None = MinInstanceSampler(min_num_instances=4, min_size=10),
        sampler_target: Literal["labels", "classes"] = "labels",
        max_tries: int = 500,
        on_failure: Literal["best", "raise", "resample"] = "best",
        flips: bool = True,
        rotate90: bool = False,
        stain_jitter: HEDJitter | None = None,
        scale_range: tuple[float, float] | None = None,
        relabel: bool = True,
        min_object_size: int = 10,
        with_semantic: bool = False,
        label_dtype: torch.dtype = torch.float32,
        label_transform: Callable[[np.ndarray], np.ndarray] | None = None,
        sample_weights: Sequence[float] | np.ndarray | None = None,
        image_choice: Literal["random", "index"] = "random",
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        if len(patch_shape) != 2 or min(int(p) for p in patch_shape) <= 0:
            raise ValueError(f"patch_shape must be two positive ints, got {patch_shape!r}")
        if on_failure not in ("best", "raise", "resample"):
            raise ValueError(f"on_failure must be 'best', 'raise' or 'resample', got {on_failure!r}")
        if sampler_target not in ("labels", "classes"):
            raise ValueError(f"sampler_target must be 'labels' or 'classes', got {sampler_target!r}")
        if image_choice not in ("random", "index"):
            raise ValueError(f"image_choice must be 'random' or 'index', got {image_choice!r}")
        if scale_range is not None and not (len(scale_range) == 2 and 0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range!r}")
        if max_tries < 1:
            raise ValueError("max_tries must be >= 1")
        if seed < 0:
            raise ValueError("seed must be non-negative")
        self.dataset = dataset
        self.patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
        self.n_samples = int(n_samples) if n_samples is not None else len(dataset)
        self.seed = int(seed)
        self.sampler = sampler
        self.sampler_target = sampler_target
        self.max_tries = int(max_tries)
        self.on_failure = on_failure
        self.flips = bool(flips)
        self.rotate90 = bool(rotate90)
        self.stain_jitter = stain_jitter
        self.scale_range = None if scale_range is None else (float(scale_range[0]), float(scale_range[1]))
        self.relabel = bool(relabel)
        self.min_object_size = int(min_object_size)
        self.with_semantic = bool(with_semantic)
        self.label_dtype = label_dtype
        self.label_transform = label_transform
        self.image_choice = image_choice
        self.epoch = 0
        if sample_weights is not None:
            p = np.asarray(sample_weights, dtype=np.float64)
            if p.shape != (len(dataset),) or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
                raise ValueError("sample_weights must be len(dataset) non-negative finite numbers, not all 0")
            self._p: np.ndarray | None = p / p.sum()
        else:
            self._p = None

    # -- epoch / resume ------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (iteration counter) that plain integer indices refer to.

        ``DataLoader`` workers receive a copy of the dataset when an iterator is created, so call
        this before iterating, and do not combine it with ``persistent_workers=True`` — or index
        with ``(epoch, k)`` tuples from :class:`EpochIndexSampler`, which works in every setting.

        Parameters
        ----------
        epoch : int
            Non-negative epoch number.
        """
        if epoch < 0:
            raise ValueError("epoch must be non-negative")
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """Everything needed to reproduce the patch stream: ``{"seed", "epoch", "n_samples"}``."""
        return {"seed": self.seed, "epoch": self.epoch, "n_samples": self.n_samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict` output.

        Parameters
        ----------
        state : dict
            As returned by :meth:`state_dict`.
        """
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.n_samples = int(state.get("n_samples", self.n_samples))

    def index_weights(self, sample_weights: Sequence[float] | np.ndarray) -> np.ndarray:
        """Per-index weights for a ``WeightedRandomSampler`` over this dataset (``image_choice="index"``).

        Index k shows sample ``k % len(dataset)``; each sample's weight is split evenly over its
        indices, so the sampler picks sample j with probability ∝ ``sample_weights[j]``. Repeated
        draws of the *same index* within one epoch give the same patch; ``n_samples`` much larger
        than ``len(dataset)`` makes that rare. The built-in ``sample_weights`` argument has no such
        repeats and needs no external sampler.

        Parameters
        ----------
        sample_weights : array-like
            (len(dataset),) non-negative weights.

        Returns
        -------
        np.ndarray
            (n_samples,) float64 weights summing to 1.
        """
        w = np.asarray(sample_weights, dtype=np.float64)
        n_data = len(self.dataset)
        if w.shape != (n_data,):
            raise ValueError(f"need {n_data} sample weights, got shape {w.shape}")
        owner = np.arange(self.n_samples) % n_data
        slots = np.bincount(owner, minlength=n_data).astype(np.float64)
        per = np.divide(w, slots, out=np.zeros_like(w), where=slots > 0)
        out = per[owner]
        total = out.sum()
        if total <= 0:
            raise ValueError("all index weights are zero")
        return out / total

    # -- the patch function --------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):
            return self.patch(int(index[0]), int(index[1]))
        return self.patch(self.epoch, int(index))

    def _rngs(self, epoch: int, index: int) -> list[np.random.Generator]:
        if epoch < 0 or index < 0:
            raise IndexError(f"epoch and index must be non-negative, got ({epoch}, {index})")
        seq = np.random.SeedSequence([self.seed, int(epoch), int(index)])
        # independent streams: image choice + crops, augmentation, stain jitter, zoom (spawned
        # children are keyed by their index, so adding the zoom stream left the others unchanged)
        return [np.random.default_rng(s) for s in seq.spawn(4)]

    def _window(self, rng: np.random.Generator) -> tuple[int, int]:
        """Source window (height, width) of one patch: the patch itself, or patch / s with zoom."""
        if self.scale_range is None:
            return self.patch_shape
        lo, hi = np.log(self.scale_range)
        s = float(np.exp(rng.uniform(lo, hi))) if hi > lo else float(np.exp(lo))
        return (max(1, round(self.patch_shape[0] / s)), max(1, round(self.patch_shape[1] / s)))

    def _choose(self, rng: np.random.Generator, exclude: set[int] | None = None) -> int:
        n = len(self.dataset)
        if not exclude:
            return int(rng.choice(n, p=self._p)) if self._p is not None else int(rng.integers(n))
        p = np.ones(n) if self._p is None else self._p.copy()
        p[list(exclude)] = 0
        if p.sum() <= 0:  # only zero-weight images left: uniform over them
            p = np.ones(n)
            p[list(exclude)] = 0
        return int(rng.choice(n, p=p / p.sum()))

    def _sampler_count(self, patch: np.ndarray) -> int:
        count = getattr(self.sampler, "count", None)
        return int(count(patch)) if callable(count) else 0

    def patch(self, epoch: int, index: int) -> dict[str, Any]:
        """Patch ``index`` of epoch ``epoch``: a pure function of ``(seed, epoch, index)``.

        Parameters
        ----------
        epoch : int
            Epoch / iteration counter (non-negative).
        index : int
            Patch number within the epoch (non-negative; indices beyond ``len(self)`` are valid).

        Returns
        -------
        dict
            ``image``, ``labels``, ``semantic`` (with ``with_semantic``), ``sample_index``,
            ``origin``, ``transform`` (see the module docstring).
        """
        rng_crop, rng_aug, rng_stain, rng_zoom = self._rngs(epoch, index)
        window = self._window(rng_zoom)
        n_data = len(self.dataset)
        j = index % n_data if self.image_choice == "index" else self._choose(rng_crop)

        best: tuple[int, int, tuple[int, int]] | None = None  # (count, sample, origin)
        tried: set[int] = set()
        found: tuple[int, tuple[int, int]] | None = None
        while found is None:
            sample = self.dataset[j]
            labels_full = np.asarray(sample.labels)
            target_full = labels_full
            if self.sampler_target == "classes":
                if sample.classes is None:
                    raise ValueError(f"sample {getattr(sample, 'name', j)!r} has no class map")
                target_full = np.asarray(sample.classes)
            for _ in range(self.max_tries if self.sampler is not None else 1):
                origin = random_crop_origin(labels_full.shape, window, rng_crop)
                if self.sampler is None:
                    found = (j, origin)
                    break
                candidate = ensure_patch_shape(crop(target_full, origin, window), window)
                if self.sampler(candidate, rng_crop):
                    found = (j, origin)
                    break
                c = self._sampler_count(candidate)
                if best is None or c >= best[0]:
                    best = (c, j, origin)
            if found is not None:
                break
            tried.add(j)
            if self.on_failure == "raise":
                raise RuntimeError(
                    f"no crop of sample {getattr(sample, 'name', j)!r} passed the sampler in "
                    f"{self.max_tries} tries (epoch {epoch}, index {index})"
                )
            if self.on_failure == "resample" and len(tried) < n_data:
                j = self._choose(rng_crop, exclude=tried)
                continue
            assert best is not None
            found = (best[1], best[2])

        j, origin = found
        return self._make_patch(j, origin, window, rng_aug, rng_stain)

    def _make_patch(
        self,
        j: int,
        origin: tuple[int, int],
        window: tuple[int, int],
        rng_aug: np.random.Generator,
        rng_stain: np.random.Generator,
    ) -> dict[str, Any]:
        sample = self.dataset[j]
        image_full = _as_rgb(sample.image)
        labels_full = np.asarray(sample.labels)
        if image_full.shape[:2] != labels_full.shape:
            raise ValueError(
                f"sample {getattr(sample, 'name', j)!r}: image {image_full.shape[:2]} and labels "
                f"{labels_full.shape} differ in shape"
            )
        image = crop(image_full, origin, window)
        if self.stain_jitter is not None:
            image = self.stain_jitter(image, rng_stain)
        image = zoom(ensure_patch_shape(np.asarray(image, dtype=np.float32), window), self.patch_shape, 1)
        labels = zoom(ensure_patch_shape(crop(labels_full, origin, window), window), self.patch_shape, 0)
        labels = relabel_instances(labels, self.min_object_size) if self.relabel else labels.astype(np.int64)
        semantic = None
        if self.with_semantic:
            if sample.classes is None:
                raise ValueError(f"sample {getattr(sample, 'name', j)!r} has no class map")
            cls_full = np.asarray(sample.classes)
            if cls_full.shape != labels_full.shape:
                raise ValueError(f"classes {cls_full.shape} and labels {labels_full.shape} differ in shape")
            semantic = zoom(ensure_patch_shape(crop(cls_full, origin, window), window), self.patch_shape, 0)
            semantic = semantic.astype(np.int64)
        target = np.asarray(self.label_transform(labels)) if self.label_transform is not None else labels
        if target.ndim == 2:
            target = target[None]

        # augmentation: flips (reference), optional rot90; same draws for every array
        hflip = bool(rng_aug.random() < 0.5) if self.flips else False
        vflip = bool(rng_aug.random() < 0.5) if self.flips else False
        k = 0
        if self.rotate90:
            square = self.patch_shape[0] == self.patch_shape[1]
            k = int(rng_aug.integers(4)) if square else 2 * int(rng_aug.integers(2))

        def aug(a: np.ndarray, h_axis: int) -> np.ndarray:
            if hflip:
                a = np.flip(a, axis=h_axis + 1)
            if vflip:
                a = np.flip(a, axis=h_axis)
            if k:
                a = np.rot90(a, k, axes=(h_axis, h_axis + 1))
            return np.ascontiguousarray(a)

        out: dict[str, Any] = {
            "image": torch.from_numpy(aug(image, 0).transpose(2, 0, 1).copy()),
            "labels": torch.from_numpy(aug(target, 1)).to(self.label_dtype),
        }
        if semantic is not None:
            out["semantic"] = torch.from_numpy(aug(semantic, 0))
        out["sample_index"] = j
        out["origin"] = torch.tensor(origin, dtype=torch.int64)
        out["transform"] = torch.tensor([int(hflip), int(vflip), k], dtype=torch.int64)
        if self.scale_range is not None:
            out["window"] = torch.tensor(window, dtype=torch.int64)
        return out


class EpochIndexSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, k)`` for ``k = start .. n_samples - 1`` — indices for :class:`TrainingPatches`.

    The epoch travels with each index, so :meth:`set_epoch` here (in the main process) takes
    effect even with ``persistent_workers=True``. ``start`` resumes mid-epoch (e.g.
    ``start = steps_done * batch_size``); call :meth:`set_epoch` for the next epoch, which resets
    ``start`` to 0. Order is sequential: the patches are already random.

    Parameters
    ----------
    n_samples : int
        Patches per epoch.
    epoch : int
        First epoch.
    start : int
        First index of the first epoch.
    """

    def __init__(self, n_samples: int, epoch: int = 0, start: int = 0) -> None:
        if n_samples < 0 or epoch < 0 or not 0 <= start <= n_samples:
            raise ValueError("need n_samples >= 0, epoch >= 0 and 0 <= start <= n_samples")
        self.n_samples = int(n_samples)
        self.epoch = int(epoch)
        self.start = int(start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Move to ``epoch``, starting at index ``start``.

        Parameters
        ----------
        epoch : int
            Epoch number.
        start : int
            First index.
        """
        self.epoch = int(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, k) for k in range(self.start, self.n_samples)])

    def __len__(self) -> int:
        return self.n_samples - self.start
