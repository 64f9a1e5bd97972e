"""The ImageNet reader: class indices from the synset list, both layouts, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgevt.data.imagenet import imagenet_synsets, open_dataset
from edgevt.data.preprocess import Preprocess
from edgevt.errors import DataError


def test_synset_list_is_imagenet_1k() -> None:
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and len(set(synsets)) == 1000
    assert synsets[0] == "n01440764"  # tench
    assert synsets[999] == "n15075141"  # toilet tissue


def test_val_subset_labels_come_from_the_synset_list(val_dir) -> None:
    dataset = open_dataset(val_dir)
    assert len(dataset) == 1000 and dataset.layout == "imagefolder"
    folders = {p.name for p in val_dir.iterdir() if p.is_dir()}
    assert len(folders) == 634  # only some classes present: enumerating them would be wrong
    synsets = imagenet_synsets()
    for sample in dataset:
        assert synsets[sample.label] == sample.path.parent.name


def test_subset_interleaves_classes(val_dir) -> None:
    subset = open_dataset(val_dir).subset(50)
    assert len(subset) == 50
    assert len({s.label for s in subset}) == 50


def test_greyscale_and_cmyk_become_rgb(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pp = Preprocess(input_size=32, crop_pct=0.875)
    for mode in ("L", "CMYK", "P", "RGBA"):
        image = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).convert(mode)
        path = tmp_path / f"img_{mode}.{'png' if mode in ('P', 'RGBA') else 'jpg'}"
        image.save(path)
        array = pp.load(path)
        assert array.shape == (3, 32, 32) and array.dtype == np.float32


def test_preprocess_matches_timm_eval_transform(val_dir) -> None:
    """Our PIL/NumPy transform equals timm's torchvision eval transform for a zoo config."""
    from timm.data import create_transform

    path = next(val_dir.rglob("*.JPEG"))
    for pp in (Preprocess(224, 0.9, "bicubic"), Preprocess(224, 0.875, "bilinear")):
        reference = create_transform(
            input_size=(3, pp.input_size, pp.input_size),
            crop_pct=pp.crop_pct,
            interpolation=pp.interpolation,
            mean=pp.mean,
            std=pp.std,
        )
        with Image.open(path) as image:
            expected = reference(image.convert("RGB")).numpy()
        np.testing.assert_allclose(pp.load(path), expected, atol=1e-5)


def test_flat_layout_with_val_txt(tmp_path, val_dir) -> None:
    synsets = imagenet_synsets()
    picked = sorted(val_dir.rglob("*.JPEG"))[:5]
    lines = []
    for i, src in enumerate(picked):
        (tmp_path / src.name).write_bytes(src.read_bytes())
        # Mix wnids and 0-based indices, as both occur in the wild.
        label = src.parent.name if i % 2 else str(synsets.index(src.parent.name))
        lines.append(f"{src.name} {label}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "flat" and len(dataset) == 5
    for sample in dataset:
        assert (
            synsets[sample.label]
            == next(p for p in picked if p.name == sample.path.name).parent.name
        )


def test_flat_layout_with_kaggle_csv(tmp_path, val_dir) -> None:
    src = sorted(val_dir.rglob("*.JPEG"))[0]
    (tmp_path / src.name).write_bytes(src.read_bytes())
    gt = tmp_path / "LOC_val_solution.csv"
    gt.write_text(f"ImageId,PredictionString\n{src.stem},{src.parent.name} 1 2 3 4\n")
    dataset = open_dataset(tmp_path)
    assert imagenet_synsets()[dataset[0].label] == src.parent.name


def test_devkit_ground_truth_is_refused_with_a_reason(tmp_path, val_dir) -> None:
    src = sorted(val_dir.rglob("*.JPEG"))[0]
    (tmp_path / src.name).write_bytes(src.read_bytes())
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("65\n970\n")
    with pytest.raises(DataError, match="devkit"):
        open_dataset(tmp_path, labels=gt)


def test_bad_data_folders(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(DataError, match="no images found"):
        open_dataset(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="no labels"):
        open_dataset(tmp_path)
    assert len(open_dataset(tmp_path, require_labels=False)) == 1


def test_corrupt_image_names_the_file(tmp_path) -> None:
    (tmp_path / "n01440764").mkdir()
    (tmp_path / "n01440764" / "broken.JPEG").write_bytes(b"not a jpeg")
    dataset = open_dataset(tmp_path)
    with pytest.raises(DataError, match="broken.JPEG"):
        next(dataset.batches(Preprocess(), batch_size=1))
