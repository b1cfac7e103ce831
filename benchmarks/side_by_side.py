"""Side-by-side timing of one AIS tile (image embedding + UNETR decoder maps): pathosam vs micro-sam.

Both sides run in worker processes on the same 512 x 512 RGB tile, the same random-weight ViT-B +
UNETR checkpoint (written here in the released layout, which micro-sam reads), with the same
number of torch threads. Workers alternate (ours, micro-sam, ours, ...); each loads its model,
runs the tile once to warm up, then times ``repeats`` runs. micro-sam runs in its own virtualenv
(``../shared/reference/microsam-install.md``), never as a dependency: pass its python.
``precisions``: of our side (``load_model(precision=)``), one worker of ours per precision in each
round; micro-sam always computes in float32 (its default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

OURS = r"""
import json, sys, time, numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
import pathosam
image = np.load(sys.argv[3])
model = pathosam.load_model(sys.argv[1], decoder=sys.argv[2], device="cpu", progress=False, precision=sys.argv[6])
def run():
    emb = model.embed(image, progress=False)
    return model.instance_maps(emb, progress=False)
run()
times = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": times, "torch": torch.__version__, "precision": model.precision}))
"""

MICROSAM = r"""
import json, sys, time, numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
from micro_sam import util
from micro_sam.instance_segmentation import InstanceSegmentationWithDecoder, get_decoder
image = np.load(sys.argv[3])
predictor = util.get_sam_model(model_type="vit_b", checkpoint_path=sys.argv[1], device="cpu")
decoder = get_decoder(predictor.model.image_encoder, torch.load(sys.argv[2], map_location="cpu"), device="cpu")
seg = InstanceSegmentationWithDecoder(predictor, decoder)
def run():
    emb = util.precompute_image_embeddings(predictor, image, ndim=2, verbose=False)
    seg.initialize(image, image_embeddings=emb, verbose=False)
run()
times = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
import micro_sam
print(json.dumps({"seconds": times, "torch": torch.__version__, "micro_sam": micro_sam.__version__}))
"""


def write_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random-weight ViT-B SAM + transposed-conv UNETR decoder in the released layout."""
    import torch

    from pathosam.models import UNETRDecoder, build_sam
    from pathosam.models.checkpoint import write_released

    torch.manual_seed(seed)
    sam, dec = build_sam("vit_b"), UNETRDecoder(3, transposed=True)
    return write_released(sam.state_dict(), dec.state_dict(), folder / "vit_b_random.pt",
                          folder / "vit_b_random_decoder.pt")


def _worker(python: str, script: str, args: list[str], env: dict) -> dict:
    out = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{python} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(image: np.ndarray, microsam_python: str, threads: int = 2, rounds: int = 3, repeats: int = 1,
            precisions: list[str] | tuple[str, ...] = ("fp32",)) -> dict:
    """Alternate ``rounds`` rounds of workers (ours in each of ``precisions``, then micro-sam);
    medians of all timed runs per side and their ratio (micro-sam seconds / pathosam seconds:
    > 1 means pathosam is faster). One precision: keys ``pathosam_s`` ...; several: one set of
    keys per precision, suffixed ``_<precision>``."""
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        tmp = Path(tmp)
        sam, dec = write_checkpoint(tmp)
        np.save(tmp / "tile.npy", np.ascontiguousarray(image))
        args = [str(sam), str(dec), str(tmp / "tile.npy"), str(threads), str(repeats)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "QT_QPA_PLATFORM": "offscreen",
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        ours: dict[str, list[float]] = {p: [] for p in precisions}
        theirs: list[float] = []
        info: dict = {}
        for _ in range(rounds):
            for p in precisions:
                r = _worker(sys.executable, OURS, args + [p], env)
                ours[p] += r["seconds"]
                info["pathosam_torch"] = r["torch"]
                info[f"pathosam_precision_{p}"] = r["precision"]  # as resolved ("auto" -> bf16 / fp32)
            env_ms = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # micro-sam's own packages only
            r = _worker(microsam_python, MICROSAM, args, env_ms)
            theirs += r["seconds"]
            info["microsam_torch"], info["micro_sam"] = r["torch"], r.get("micro_sam")
    mt = float(np.median(theirs))
    res: dict = {"microsam_precision": "fp32"}
    for p in precisions:
        sfx = "" if len(precisions) == 1 else f"_{p}"
        mo = float(np.median(ours[p]))
        res.update({f"pathosam{sfx}_s": [round(t, 2) for t in ours[p]], f"pathosam{sfx}_median_s": round(mo, 2),
                    f"ratio_microsam_over_pathosam{sfx}": round(mt / mo, 2)})
    if len(precisions) == 1:
        res["pathosam_precision"] = info.pop(f"pathosam_precision_{precisions[0]}")
    return {**res, "microsam_s": [round(t, 2) for t in theirs], "microsam_median_s": round(mt, 2), **info}
