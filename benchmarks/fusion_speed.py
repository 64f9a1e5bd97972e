"""Does fusion make the model faster? PyTorch eager unfused vs fused vs ONNX Runtime fp32.

Batch 1, on this machine's CPU; every ratio is measured within one run, with the variants
timed in interleaved rounds so that machine noise hits them alike
(``edgevt.timing.median_ms_loaded_in_turn``, which the other benchmark scripts use too).

    .venv/bin/python benchmarks/fusion_speed.py [--models levit_128s cvt_13 efficientnet_lite0]
        [--threads 1 2] [--rounds 7] [--iters 20]
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from edgevt import api
from edgevt.models import get_entry, load_model
from edgevt.targets.onnx import OnnxRuntimeRunner
from edgevt.timing import median_ms_loaded_in_turn, runner_turn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["levit_128s", "cvt_13", "efficientnet_lite0"]
    )
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    print(
        f"{'model':<20}{'threads':>8}{'eager ms':>10}{'fused ms':>10}{'ORT ms':>9}"
        f"{'fused speed-up':>16}{'ORT speed-up':>14}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            pretrained = name == "efficientnet_lite0"
            outcome = api.export(name, pretrained=pretrained, out=Path(tmp) / name, progress=False)
            eager = load_model(name, pretrained=pretrained).model
            fused, _ = api.load_fused(outcome.run_dir / api.FUSED_FILE)
            size = get_entry(name).preprocess.input_size
            x = torch.from_numpy(
                np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
            )
            for threads in args.threads:
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    eager_call, fused_call = partial(eager, x), partial(fused, x)
                    ms = median_ms_loaded_in_turn(
                        {
                            "eager": lambda f=eager_call: (f, lambda: None),
                            "fused": lambda f=fused_call: (f, lambda: None),
                            "ort": runner_turn(
                                partial(OnnxRuntimeRunner, outcome.artifact, threads), x.numpy()
                            ),
                        },
                        args.rounds,
                        args.iters,
                    )
                print(
                    f"{name:<20}{threads:>8}{ms['eager']:>10.2f}{ms['fused']:>10.2f}"
                    f"{ms['ort']:>9.2f}{ms['eager'] / ms['fused']:>15.2f}x"
                    f"{ms['eager'] / ms['ort']:>13.2f}x"
                )


if __name__ == "__main__":
    main()
