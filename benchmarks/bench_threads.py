"""Threads and OpenMP wait policy when other processes share the cores.

Each configuration runs in a fresh worker process (OpenMP reads ``OMP_WAIT_POLICY`` when torch
loads it): ``segment_nuclei`` of one real image crop with the given model, torch threads and wait
policy, while ``--busy K`` other processes spin on the CPU (K = 0: the machine to itself; a
stand-in for a busy server or several Dask workers on one machine). Prints seconds per run
(median of ``--repeats`` after one warm-up) and the ratio to the quiet run of the same setting.
``default`` is what ``import pathosam`` sets up (the package's choice), ``ACTIVE`` / ``PASSIVE``
force the policy, ``spin=N`` sets GNU OpenMP's ``GOMP_SPINCOUNT`` (spins before a thread sleeps).

    python benchmarks/bench_threads.py --model pathosam_small --threads 2 --busy 0 1 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, os, sys, time, numpy as np
import pathosam, torch
from pathosam.datasets import open_dataset
threads = int(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
s = open_dataset(sys.argv[2])[0]
image = s.image[: int(sys.argv[4]), : int(sys.argv[4])]
model = pathosam.load_model(sys.argv[1], device="cpu", progress=False)
pathosam.segment_nuclei(image, model, progress=False)
times = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter(); pathosam.segment_nuclei(image, model, progress=False); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "threads": torch.get_num_threads(),
                  "policy": os.environ.get("OMP_WAIT_POLICY", ""), "spin": os.environ.get("GOMP_SPINCOUNT", "")}))
"""


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x += 1


def run(model: str, data: str, threads: int, side: int, repeats: int, policy: str, busy: int) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy.startswith("spin="):
        env["GOMP_SPINCOUNT"] = policy[5:]
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        out = subprocess.run([sys.executable, "-c", WORKER, model, data, str(threads), str(side), str(repeats)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        stop.set()
        for p in spinners:
            p.join()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from pathosam.precision import cpu_flags, cpu_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pathosam_small")
    ap.add_argument("--data", default=os.environ.get("PATHOSAM_SHARED", str(ROOT.parent / "shared")) + "/data/gbm40")
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--side", type=int, default=512, help="image crop side in pixels (512)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--policies", nargs="+", default=["default", "ACTIVE", "PASSIVE"])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"# {cpu_model()} ({', '.join(flags)}), {os.cpu_count()} cores; {args.model}, {args.side} px crop")
    print("| threads | policy | busy processes | seconds per image | vs quiet |")
    print("|---|---|---|---|---|")
    for threads in args.threads:
        for policy in args.policies:
            quiet = None
            for busy in args.busy:
                r = run(args.model, args.data, threads, args.side, args.repeats, policy, busy)
                quiet = r["seconds"] if busy == 0 else quiet
                ratio = f"{r['seconds'] / quiet:.2f}x" if quiet else ""
                print(f"| {r['threads']} | {policy} | {busy} | {r['seconds']:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
