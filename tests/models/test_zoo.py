"""Every zoo model builds with non-degenerate random weights, fuses and exports to ONNX.

Parametrized over the registry: a new model is tested without editing this file.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgevt.artifact import ArtifactInfo
from edgevt.data.imagenet import imagenet_synsets
from edgevt.fuse import fuse_model
from edgevt.fuse.batchnorm import batchnorm_modules
from edgevt.models import list_models, load_model
from edgevt.targets.onnx import OnnxRuntimeRunner, export_onnx, read_onnx_info
from edgevt.validate.evaluate import compare_logits
from tests.helpers import real_images, zoo_params

# Models whose fp32 fusion difference stays below 1e-4 of the logit range with random weights.
STRICT_FUSION_BAR = {"levit_128s", "levit_128", "cvt_13", "cvt_21", "cvt_w24", "efficientnet_lite0"}


@pytest.mark.parametrize("name", zoo_params(list_models()))
def test_zoo_model_fuses_and_exports(name: str, tmp_path, data_root) -> None:
    loaded = load_model(name)
    model = loaded.model
    images = real_images(name, 8)
    with torch.no_grad():
        logits = model(images)
    assert logits.shape == (8, 1000)
    # Non-degenerate: logits must vary across images about as much as across classes
    # (timm's fresh LeViT gives a near-constant output, which would make every check vacuous).
    assert float(logits.std(dim=0).mean() / logits.std(dim=1).mean()) > 0.1
    assert len(set(logits.argmax(1).tolist())) > 1

    fused, report = fuse_model(model, loaded.entry.family, images, "test images")
    assert report.batchnorm_before > 0
    assert batchnorm_modules(fused) == []
    assert report.ok
    if name in STRICT_FUSION_BAR:
        assert report.within_tolerance  # the plain bar: < 1e-4 of the logit range in fp32
    else:  # deep random LeViTs amplify fp32 rounding: the rewrite must be exact in float64
        assert report.within_tolerance or report.float64_max_abs_diff < 1e-6 * report.logit_range

    info = ArtifactInfo(name, loaded.entry.preprocess, imagenet_synsets(), target="onnx")
    path = export_onnx(fused, info, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert read_onnx_info(path).preprocess == loaded.entry.preprocess
    with torch.no_grad():
        reference = fused(images).numpy()
    with OnnxRuntimeRunner(path) as runner:
        out = runner.infer(images.numpy())
        single = runner.infer(images[:1].numpy())  # the batch axis really is dynamic
    # ONNX Runtime fuses and reorders float ops; allow 5e-4 of the logit scale.
    tol = 5e-4 * max(float(np.abs(reference).max()), 1.0)
    assert np.abs(out - reference).max() < tol
    assert compare_logits(reference, out)["cosine"] > 0.99999
    np.testing.assert_allclose(single, out[:1], atol=tol)


def test_random_init_is_reproducible_and_seeded() -> None:
    a = load_model("levit_128s", seed=1).model.state_dict()
    b = load_model("levit_128s", seed=1).model.state_dict()
    c = load_model("levit_128s", seed=2).model.state_dict()
    key = "stages.0.blocks.0.attn.attention_biases"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])
    assert float(a[key].abs().max()) > 0  # timm leaves these at zero


def test_unknown_model_names_alternatives() -> None:
    from edgevt.errors import EdgevtError

    with pytest.raises(EdgevtError, match="levit_128s"):
        load_model("levit128s")
