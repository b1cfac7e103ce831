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


def test_model_stage_threads_halve_for_small_models_only():
    from pathosam.threads import model_stage_threads

    assert model_stage_threads(1024, 8) == 8 and model_stage_threads(1024, 1) == 1
    assert model_stage_threads(256, 2) == 1 and model_stage_threads(256, 8) == 4
    assert model_stage_threads(256, 1) == 1 and model_stage_threads(256, 0) == 1


def test_slide_run_restores_the_torch_threads(tmp_path):
    import torch

    from pathosam.instances.tiled import AISParams
    from pathosam.wsi.pipeline import SlideOptions, segment_slide

    from .test_segment import MapsFromImage, disk_image
    from .test_wsi_pipeline import write_pyramid

    image, _ = disk_image((200, 260), seed=1, n=20)
    write_pyramid(tmp_path / "s.ome.tif", image, 0.5)
    before = torch.get_num_threads()

    class SmallMaps(MapsFromImage):
        img_size = 256  # a small model: its model stage runs on half the threads, then they are restored

    model = SmallMaps()
    seen = []
    decode = model.decode
    model.decode = lambda *a, **k: seen.append(torch.get_num_threads()) or decode(*a, **k)
    opts = SlideOptions(target_mpp=None, tile_shape=(64, 64), halo=(16, 16), tissue=False, ais=AISParams(min_size=5))
    segment_slide(tmp_path / "s.ome.tif", model, tmp_path / "out", opts, progress=False)
    assert seen and set(seen) == {max(1, before // 2)}
    assert torch.get_num_threads() == before
