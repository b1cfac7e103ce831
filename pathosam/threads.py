"""CPU threads of the worker processes pathosam starts itself (no torch import here).

Several torch processes on one machine (``pathosam segment --workers N``: N local Dask workers)
each start one OpenMP thread per core by default, and GNU OpenMP's threads spin while they wait
for each other. With more threads than cores a spinning thread keeps the core its partner needs:
the small model then ran 3-7x slower (``benchmarks/bench_threads.py``, docs/benchmarks.md). So each
worker gets its share of the cores (``cores // workers``, at least 1) and the passive wait policy
(threads sleep instead of spinning), set in its environment before torch is imported there.
A value the user set in the environment is kept.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_threads(n_workers: int, cores: int | None = None) -> int:
    """torch threads for each of ``n_workers`` processes sharing ``cores`` (default: usable)."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return max(1, (usable_cores() if cores is None else int(cores)) // n_workers)


def worker_environment(n_workers: int, cores: int | None = None) -> dict[str, str]:
    """Environment of each of ``n_workers`` local worker processes: OpenMP / MKL threads =
    :func:`worker_threads`, ``OMP_WAIT_POLICY=PASSIVE``; variables already set are kept."""
    t = str(worker_threads(n_workers, cores))
    wanted = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OMP_WAIT_POLICY": "PASSIVE"}
    return {k: os.environ.get(k, v) for k, v in wanted.items()}


#: Largest model input (px) counted as small in :func:`model_stage_threads`.
SMALL_INPUT = 256


def model_stage_threads(img_size: int, threads: int) -> int:
    """torch threads for the model stage of the slide pipeline, which runs beside its block
    post-processing stage: all ``threads`` for the reference-sized models (their tiles keep the
    cores busy, post-processing is < 1 % of the work); half of them, at least 1, for a model of
    input <= :data:`SMALL_INPUT` px, whose 128 px tiles use more threads poorly while the
    post-processing is a large share of the work (pathosam_small on 2 cores, CMU-1 ROI: 1 model
    thread 337 s / mm², 2 threads 518 s / mm²; docs/benchmarks.md)."""
    threads = max(1, int(threads))
    return max(1, threads // 2) if img_size <= SMALL_INPUT else threads
