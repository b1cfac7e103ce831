"""Requests per second of ``pathosam serve`` for point prompts on one cached image.

A real server process on localhost answers ``POST /sam/`` point prompts (one foreground point,
single mask, the QuPath extension's exact request) on one image whose embedding is cached after
the first request; the client sends one request per connection, as the extension does. Reported:

* first request (decode + image embedding + prompt) in s;
* sequential: ms per prompt (median, p90) and requests/s with one client;
* concurrent: requests/s with ``--clients`` clients at once (inference is serialised in the
  server, so this shows the overhead of queueing, not extra throughput);
* with ``--during-automask N``: point prompts sent while an automask of an N x N image runs
  (prompts go before waiting automasks; the automask yields between tiles): prompt latency
  median / max, against the idle median of the same run, and the automask's own time;
* in-process split of one prompt: ``model.predict`` (prompt encoder + mask decoder + upsampling
  to the image) and mask -> Feature geometry, so that HTTP + JSON overhead = request - both;
  and the geometry of a compact ~18 x 12 px nucleus-like mask for comparison.

By default the tiny reference model of the shared vectors is served: its prompt encoder and mask
decoder are SAM's full-size ones (the same for ViT-B/L/H), so the per-prompt cost is that of a
real model; only the first request's embedding is cheaper. Its random-weight masks are large and
ragged, which makes the geometry step slower than for real nuclei. Pass ``--model`` (a registry
name in the cache or a file) for a real checkpoint.

    python benchmarks/bench_server.py --threads 2 [--requests 200] [--clients 4] [--model FILE]
        [--image PNG] [--json OUT.json] [--during-automask 1536]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def shared() -> Path:
    return Path(os.environ.get("PATHOSAM_SHARED", ROOT.parent / "shared"))


def tiny_model_file(tmp: Path) -> Path:
    with tarfile.open(shared() / "vectors/tiny_checkpoints.tar.xz", "r:xz") as tar:
        tar.extract("tiny_sam.pt", tmp, filter="data")
    return tmp / "tiny_sam.pt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", path, body, {"accept": "application/json",
                                          "Content-Type": "application/json; charset=utf-8"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def gson(obj) -> bytes:
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("=", "\\u003d").encode()


def start_server(model: str, port: int, threads: int, workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PATHOSAM_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pathosam", "serve", "--port", str(port), "--model", model,
                             "-d", "cpu", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "server.log").read_text())
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/sam/version/")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def prompts_during_automask(port: int, rgb: np.ndarray, size: int, bodies: list[bytes]) -> dict:
    """Send prompts one after another while an automask of a ``size`` x ``size`` image (``rgb``
    tiled) runs in another connection; latencies of the prompts answered before it finished."""
    import threading

    from PIL import Image

    big = np.tile(rgb, (-(-size // rgb.shape[0]), -(-size // rgb.shape[1]), 1))[:size, :size]
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")
    auto = gson({"type": "vit_b", "b64img": base64.b64encode(buf.getvalue()).decode(),
                 "output_type": "Multi-mask (all)", "include_image_edge": True})
    done: dict = {}

    def run_automask() -> None:
        t = time.perf_counter()
        done["status"], answer = post(port, "/sam/automask/", auto)
        done["s"], done["n"] = time.perf_counter() - t, len(json.loads(answer)) if done["status"] == 200 else -1

    worker = threading.Thread(target=run_automask)
    worker.start()
    time.sleep(1.0)  # the automask has started (request decoded, first tiles running)
    lat = []
    for b in bodies:
        if "s" in done:
            break
        t = time.perf_counter()
        status, _ = post(port, "/sam/", b)
        lat.append(time.perf_counter() - t)
        assert status == 200
    worker.join()
    ms = np.array(lat) * 1000
    return {"automask_image": f"{size}x{size}", "automask_s": round(done["s"], 2), "automask_nuclei": done["n"],
            "prompts_during_automask": len(lat),
            "during_automask_ms_per_prompt_median": round(float(np.median(ms)), 1) if len(ms) else None,
            "during_automask_ms_per_prompt_max": round(float(np.max(ms)), 1) if len(ms) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="registry name or weights file (default: the tiny reference model)")
    parser.add_argument("--image", help="RGB image (default: 512 x 512 GBM40 tile of the shared vectors)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of server and in-process runs")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--during-automask", type=int, metavar="N",
                        help="also time prompts sent while an automask of an N x N image runs")
    args = parser.parse_args()

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_server_"))
    model = args.model or str(tiny_model_file(tmp))
    image_path = args.image or shared() / "vectors/inputs/gbm40_512.png"
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    H, W = rgb.shape[:2]
    rng = np.random.default_rng(0)
    points = rng.integers(0, [W, H], size=(args.requests, 2)).tolist()

    def body(p):
        return gson({"type": "vit_b", "b64img": b64, "point_coords": [p], "point_labels": [1],
                     "multimask_output": False})

    port = free_port()
    proc = start_server(model, port, args.threads, tmp)
    try:
        t = time.perf_counter()
        status, _ = post(port, "/sam/", body(points[0]))
        first_s = time.perf_counter() - t
        assert status == 200
        post(port, "/sam/", body(points[1]))  # warm-up
        bodies = [body(p) for p in points]  # the client's JSON encoding is not timed
        times = []
        t_all = time.perf_counter()
        for b in bodies:
            t = time.perf_counter()
            status, answer = post(port, "/sam/", b)
            times.append(time.perf_counter() - t)
            assert status == 200, answer[:200]
        seq_s = time.perf_counter() - t_all
        t_all = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            statuses = list(pool.map(lambda b: post(port, "/sam/", b)[0], bodies))
        conc_s = time.perf_counter() - t_all
        assert set(statuses) == {200}
        during = prompts_during_automask(port, rgb, args.during_automask, bodies) if args.during_automask else {}
    finally:
        proc.terminate()
        proc.wait(30)

    import pathosam
    from pathosam.server.geometry import mask_features

    m = pathosam.load_model(model, device="cpu", progress=False)
    emb = m.embed(rgb, progress=False)
    pred, geom = [], []
    for p in points[: min(50, len(points))]:
        t = time.perf_counter()
        masks, ious, _ = m.predict(emb, points=[p], point_labels=[1])
        pred.append(time.perf_counter() - t)
        t = time.perf_counter()
        mask_features(masks, ious, "vit_b")
        geom.append(time.perf_counter() - t)

    yy, xx = np.mgrid[:H, :W]
    nucleus = ((yy - H / 2) / 6) ** 2 + ((xx - W / 2) / 9) ** 2 <= 1  # a ~18 x 12 px nucleus-like mask
    nuc = []
    for _ in range(50):
        t = time.perf_counter()
        mask_features(nucleus[None], [1.0], "vit_b")
        nuc.append(time.perf_counter() - t)

    ms = np.array(times) * 1000
    result = {
        "model": Path(model).name, "image": f"{W}x{H}", "threads": args.threads, "requests": args.requests,
        "first_request_s": round(first_s, 3),
        "sequential_ms_per_prompt_median": round(float(np.median(ms)), 1),
        "sequential_ms_per_prompt_p90": round(float(np.percentile(ms, 90)), 1),
        "sequential_requests_per_s": round(args.requests / seq_s, 2),
        f"concurrent_{args.clients}_clients_requests_per_s": round(args.requests / conc_s, 2),
        "in_process_predict_ms_median": round(float(np.median(pred)) * 1000, 1),
        "in_process_predict_ms_min": round(float(np.min(pred)) * 1000, 1),
        "in_process_geometry_ms_median": round(float(np.median(geom)) * 1000, 1),
        "geometry_ms_nucleus_like_mask": round(float(np.median(nuc)) * 1000, 2),
        **during,
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
