"""Speed of pathosam's instance metrics (mSA, matching, PQ, AJI) against naive per-pair code.

Synthetic data: ``--n`` disk nuclei (radius 6-12 px, on a jittered grid, later disks painting
over earlier ones) in a ``--size`` x ``--size`` label image; the prediction moves each disk by up
to 2 px, changes its radius by up to 2 px, drops 5 % of them, splits 3 % in two and adds 3 %
false positives, with shuffled non-consecutive ids.

"naive" is the classic implementation: one boolean mask per ground-truth object, the predictions
under it, and one mask per overlapping pair (``IoU = |P&G| / |P|G|``) to fill a dense
(n_pred, n_gt) IoU matrix (HoVer-Net's ``get_fast_pq`` / elf before its contingency table), then
the metric on that matrix: for mSA the reference's dense Hungarian assignment at each of the 10
thresholds. The IoU matrix is built once and its time is added to each naive metric. The
results of both implementations are compared.

    python benchmarks/bench_metrics.py [--size 1000] [--n 1000] [--repeats 5] [--no-naive] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

from pathosam.evaluation import metrics as M


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median milliseconds of ``fn()`` over ``repeats`` runs (after one warm-up) and its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def _disk(img: np.ndarray, label: int, cy: float, cx: float, r: float, only=None) -> None:
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, img.shape[0])
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, img.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if only is not None:
        m &= only(yy, xx)
    img[y0:y1, x0:x1][m] = label


def synthetic_pair(size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    step = size / side
    gt = np.zeros((size, size), np.uint32)
    seg = np.zeros((size, size), np.uint32)
    cells = rng.permutation(side * side)[:n]
    nuclei = []
    for k, cell in enumerate(cells):
        cy = (cell // side + 0.5) * step + rng.uniform(-0.3, 0.3) * step
        cx = (cell % side + 0.5) * step + rng.uniform(-0.3, 0.3) * step
        r = rng.uniform(6, 12)
        _disk(gt, k + 1, cy, cx, r)
        nuclei.append((cy, cx, r))
    ids = rng.permutation(np.arange(1, 4 * n + 1))  # shuffled, non-consecutive prediction ids
    j = 0
    for cy, cx, r in nuclei:
        u = rng.random()
        if u < 0.05:  # missed
            continue
        cy2, cx2 = cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)
        r2 = max(r + rng.uniform(-2, 2), 3)
        if u < 0.08:  # split along the horizontal diameter
            _disk(seg, ids[j], cy2, cx2, r2, only=lambda yy, xx, c=cy2: yy < c)
            _disk(seg, ids[j + 1], cy2, cx2, r2, only=lambda yy, xx, c=cy2: yy >= c)
            j += 2
        else:
            _disk(seg, ids[j], cy2, cx2, r2)
            j += 1
    for _ in range(int(0.03 * n)):  # false positives
        _disk(seg, ids[j], rng.uniform(0, size), rng.uniform(0, size), rng.uniform(4, 9))
        j += 1
    return seg, gt


# --------------------------------------------------------------------------------------------
# naive reference code
# --------------------------------------------------------------------------------------------


def naive_tables(seg: np.ndarray, gt: np.ndarray):
    s_ids = np.unique(seg)
    s_ids = s_ids[s_ids != 0]
    g_ids = np.unique(gt)
    g_ids = g_ids[g_ids != 0]
    s_pos = {int(v): i for i, v in enumerate(s_ids)}
    inter = np.zeros((s_ids.size, g_ids.size))
    union = np.zeros((s_ids.size, g_ids.size))
    s_area = np.array([np.count_nonzero(seg == v) for v in s_ids], float)
    g_area = np.zeros(g_ids.size)
    for b, g in enumerate(g_ids):
        g_mask = gt == g
        g_area[b] = np.count_nonzero(g_mask)
        for p in np.unique(seg[g_mask]):
            if p == 0:
                continue
            p_mask = seg == p
            a = s_pos[int(p)]
            inter[a, b] = np.count_nonzero(p_mask & g_mask)
            union[a, b] = np.count_nonzero(p_mask | g_mask)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou, inter, union, s_area, g_area


def naive_tp(iou: np.ndarray, t: float) -> int:
    n_matched = min(iou.shape)
    if n_matched == 0 or not np.any(iou >= t):
        return 0
    r, c = linear_sum_assignment(-(iou >= t).astype(float) - iou / (2 * n_matched))
    return int(np.count_nonzero(iou[r, c] >= t))


def naive_msa(iou: np.ndarray) -> float:
    n_pred, n_true = iou.shape
    acc = []
    for t in M.DEFAULT_THRESHOLDS:
        tp = naive_tp(iou, t)
        acc.append(tp / (n_pred + n_true - tp) if tp else 0.0)
    return float(np.mean(acc))


def naive_matching(iou: np.ndarray) -> float:
    tp = naive_tp(iou, 0.5)
    return 2 * tp / (2 * tp + (iou.shape[0] - tp) + (iou.shape[1] - tp)) if tp else 0.0  # f1


def naive_pq(iou: np.ndarray) -> float:
    ok = iou > 0.5
    tp = int(ok.sum())
    fp, fn = iou.shape[0] - tp, iou.shape[1] - tp
    return tp / (tp + 0.5 * fp + 0.5 * fn) * (iou[ok].sum() / tp if tp else 0.0)


def naive_aji(iou, inter, union, s_area, g_area) -> float:
    best = iou.argmax(axis=0)
    cols = np.arange(iou.shape[1])
    hit = iou[best, cols] > 0
    num = inter[best[hit], cols[hit]].sum()
    den = union[best[hit], cols[hit]].sum() + g_area[~hit].sum()
    used = np.zeros(iou.shape[0], bool)
    used[best[hit]] = True
    return float(num / (den + s_area[~used].sum()))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1000, help="square image side in pixels")
    ap.add_argument("--n", type=int, default=1000, help="number of ground-truth nuclei")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-naive", action="store_true", help="time pathosam only")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    seg, gt = synthetic_pair(args.size, args.n, args.seed)
    ct = M.contingency_table(seg, gt)
    print(f"image {args.size}x{args.size}: {ct.n_gt} GT nuclei, {ct.n_seg} predicted, "
          f"{ct.intersection.size} overlapping pairs | numpy {np.__version__} | {platform.processor() or platform.machine()}")

    fast = {
        "contingency": lambda: M.contingency_table(seg, gt),
        "mSA (10 thr.)": lambda: M.mean_segmentation_accuracy(seg, gt),
        "matching@0.5": lambda: M.matching(seg, gt)["f1"],
        "PQ": lambda: M.panoptic_quality(seg, gt)["pq"],
        "AJI": lambda: M.aggregated_jaccard_index(seg, gt),
    }
    results = {"size": args.size, "n": args.n, "n_gt": ct.n_gt, "n_pred": ct.n_seg, "rows": {}}
    fast_ms, fast_val = {}, {}
    for name, fn in fast.items():
        fast_ms[name], fast_val[name] = timed(fn, args.repeats)

    naive_ms, naive_val = {}, {}
    if not args.no_naive:
        t = time.perf_counter()
        iou, inter, union, s_area, g_area = naive_tables(seg, gt)
        table_ms = (time.perf_counter() - t) * 1e3
        naive_ms["contingency"] = table_ms
        post = {
            "mSA (10 thr.)": lambda: naive_msa(iou),
            "matching@0.5": lambda: naive_matching(iou),
            "PQ": lambda: naive_pq(iou),
            "AJI": lambda: naive_aji(iou, inter, union, s_area, g_area),
        }
        for name, fn in post.items():
            t = time.perf_counter()
            naive_val[name] = fn()
            naive_ms[name] = table_ms + (time.perf_counter() - t) * 1e3

    print(f"{'metric':<16}{'pathosam ms':>13}{'naive ms':>12}{'ratio':>9}  agree")
    for name in fast:
        row = {"pathosam_ms": round(fast_ms[name], 2)}
        line = f"{name:<16}{fast_ms[name]:>13.1f}"
        if name in naive_ms:
            ratio = naive_ms[name] / fast_ms[name]
            row.update(naive_ms=round(naive_ms[name], 1), ratio=round(ratio, 1))
            line += f"{naive_ms[name]:>12.1f}{ratio:>8.0f}x"
            if name in naive_val:
                agree = abs(float(fast_val[name]) - float(naive_val[name])) <= 1e-12
                row.update(value=float(fast_val[name]), agree=agree)
                line += f"  {agree} ({float(fast_val[name]):.6f})"
        print(line)
        results["rows"][name] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
