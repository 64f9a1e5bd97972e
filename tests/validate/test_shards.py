"""Sharded evaluation: shards of whole batches, merged in order, equal one process exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgevt import api
from edgevt.shards import plan_shards
from edgevt.validate.significance import paired_top1


@pytest.mark.parametrize(("images", "batch", "workers"), [(1000, 32, 2), (50, 32, 4), (7, 2, 3)])
def test_shards_are_whole_batches_covering_every_image_once(images, batch, workers) -> None:
    shards = plan_shards(images, batch, workers)
    assert shards[0][0] == 0 and shards[-1][1] == images
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:], strict=False))
    assert all(start % batch == 0 for start, _ in shards)  # one process's batches, unchanged
    assert len(shards) <= workers * 4


def test_real_lite0_int8_on_two_workers_equals_one_process(lite0_int8_run: Path, val_dir) -> None:
    """imagenet-val1000, real checkpoint: top-1/top-5, per-class counts and lost/won against
    fp32 are those of a single process, because the logits are (bit for bit)."""
    int8 = lite0_int8_run / "model_int8.onnx"
    one = api.evaluate(int8, val_dir, threads=1, progress=False)
    two = api.evaluate(int8, val_dir, threads=1, workers=2, progress=False)
    assert two.n == one.n == 1000
    assert two.runner["workers"] == 2
    np.testing.assert_array_equal(two.labels, one.labels)
    np.testing.assert_array_equal(two.logits, one.logits)
    assert (two.top1, two.top5) == (one.top1, one.top5)
    assert two.per_class() == one.per_class()
    reference = api.evaluate(lite0_int8_run / "model.onnx", val_dir, threads=1, progress=False)
    assert paired_top1(one.labels, reference.logits, two.logits) == paired_top1(
        one.labels, reference.logits, one.logits
    )


def test_a_worker_that_cannot_load_the_file_gives_one_line(tmp_path: Path, val_dir) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx graph")
    proc = subprocess.run(
        [sys.executable, "-m", "edgevt.cli", "eval", str(bad), "--data", str(val_dir),
         "--workers", "2", "--limit", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "model.onnx" in proc.stderr


RAY_SCRIPT = """
import sys, numpy as np, ray
from edgevt import api
from edgevt.shards import EvalJob, RayWorkers, evaluate_sharded
model, data = sys.argv[1], sys.argv[2]
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=2**28)
one = api.evaluate(model, data, limit=96, threads=1, progress=False)
two = evaluate_sharded(EvalJob(model, data, limit=96, threads=1), 2, progress=False,
                       pool=RayWorkers)
assert np.array_equal(one.logits, two.logits) and two.runner["workers"] == 2
print("same", two.top1)
"""


@pytest.mark.slow
def test_ray_actors_evaluate_shards_like_one_process(
    lite0_int8_run: Path, val_dir, tmp_path: Path
) -> None:
    """The workers a sweep would use (Ray actors), in a network namespace of their own."""
    import shutil
    import tempfile

    pytest.importorskip("ray")
    if shutil.which("unshare") is None or subprocess.run(
        ["unshare", "--net", "true"], capture_output=True
    ).returncode:
        pytest.skip("Ray tests run in a private network namespace: needs unshare --net")
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must be short
    try:
        proc = subprocess.run(
            ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
             sys.executable, "-c", RAY_SCRIPT, str(lite0_int8_run / "model_int8.onnx"),
             str(val_dir)],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "RAY_TMPDIR": ray_dir, "HOME": str(tmp_path),
                 "RAY_USAGE_STATS_ENABLED": "0"},
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert proc.returncode == 0 and "same" in proc.stdout, proc.stderr[-3000:]


def test_an_export_evaluated_by_workers_scores_as_one_process(tmp_path: Path, val_dir) -> None:
    """`edgevt export --eval-workers 2` (and [eval] workers in a pipeline): the reference and
    each file are sharded. Random weights: the workers rebuild the same model from its seed, so
    the file still agrees with the reference it was exported from."""
    out = api.export("levit_128s", seed=3, out=tmp_path / "levit", eval_data=val_dir, limit=64,
                     eval_workers=2, progress=False)  # fmt: skip
    sharded = out.evals
    one = api.evaluate("levit_128s", val_dir, seed=3, limit=64, progress=False)
    assert sharded["pytorch_fp32"]["n"] == 64
    assert sharded["pytorch_fp32"]["top5"] == round(one.top5, 3)
    assert sharded["pytorch_fp32"]["runner"]["workers"] == 2
    assert sharded["model.onnx"]["vs_pytorch_fp32"]["cosine"] > 0.99999
    assert sharded["model.onnx"]["vs_pytorch_fp32"]["top1_agreement"] == 1.0
