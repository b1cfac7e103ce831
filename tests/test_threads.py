"""Threads of pathosam's own worker processes (pathosam.threads)."""

from __future__ import annotations

import pytest

from pathosam.threads import usable_cores, worker_environment, worker_threads


def test_each_worker_gets_its_share_of_the_cores():
    assert worker_threads(1, cores=8) == 8
    assert worker_threads(3, cores=8) == 2
    assert worker_threads(4, cores=2) == 1  # never 0
    assert 1 <= worker_threads(1) == usable_cores()
    with pytest.raises(ValueError, match="n_workers must be >= 1"):
        worker_threads(0)


def test_worker_environment_is_passive_and_keeps_user_values(monkeypatch):
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(k, raising=False)
    assert worker_environment(2, cores=8) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4",
                                              "OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = worker_environment(2, cores=8)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "4"


def test_local_dask_workers_get_the_environment(monkeypatch):
    pytest.importorskip("dask.distributed")
    import argparse

    from pathosam.cli.segment import _dask_client

    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(k, raising=False)
    client = _dask_client(argparse.Namespace(workers=2, scheduler=None))
    try:
        def probe():
            import os

            import torch

            return os.environ.get("OMP_WAIT_POLICY"), torch.get_num_threads()

        want = worker_threads(2)
        assert set(client.run(probe).values()) == {("PASSIVE", want)}
    finally:
        client.close()
        client.cluster.close()
