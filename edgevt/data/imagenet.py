"""ImageNet-style evaluation and calibration data read from a local folder.

Two layouts are understood:

* ImageFolder: ``DIR/<wnid>/<image>`` (torchvision/timm). The class index of a folder comes
  from the ImageNet-1k synset list, never from enumerating the folders present, because a
  subset holds only some classes.
* Flat ILSVRC: ``DIR/<image>`` plus a ground-truth file, either ``<file name> <wnid|index>``
  per line (``val.txt`` style, 0-based indices in synset order) or the Kaggle
  ``LOC_val_solution.csv`` (``ImageId,PredictionString`` whose first token is the wnid).

A folder without labels (only images, any nesting) can still be read for calibration.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgevt.data.preprocess import Preprocess
from edgevt.errors import DataError, path_problem

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
GROUND_TRUTH_NAMES = ("LOC_val_solution.csv", "val.txt", "ground_truth.txt", "labels.txt")


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k wnids; the line number is the class index every model uses."""
    text = resources.files("edgevt.data").joinpath("imagenet_synsets.txt").read_text()
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def imagenet_class_names() -> list[str]:
    text = resources.files("edgevt.data").joinpath("imagenet_synsets.txt").read_text()
    return [line.split(" ", 1)[1] for line in text.splitlines() if line.strip()]


def default_data_root() -> Path:
    """``$EDGEVT_DATA`` or ``../shared/data`` beside the checkout (the tests' and demo's data)."""
    env = os.environ.get("EDGEVT_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # -1 when the folder carries no labels (calibration data)


class ImageDataset(Sequence[Sample]):
    """A list of image files with ImageNet-1k class indices."""

    def __init__(self, samples: list[Sample], root: Path, layout: str) -> None:
        self.samples = samples
        self.root = root
        self.layout = layout

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):  # type: ignore[override]
        return self.samples[index]

    @property
    def labelled(self) -> bool:
        return all(s.label >= 0 for s in self.samples)

    def subset(self, limit: int | None) -> ImageDataset:
        """The first ``limit`` samples in a class-interleaved order (a fair small subset)."""
        if limit is not None and (isinstance(limit, bool) or limit < 1):
            raise DataError(f"--limit {limit}: evaluate at least 1 image (or leave it out).")
        if limit is None or limit >= len(self.samples):
            return self
        return ImageDataset(_interleave(self.samples)[:limit], self.root, self.layout)

    def batches(
        self, preprocess: Preprocess, batch_size: int = 32, workers: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (images NCHW float32, labels) batches, decoded in threads (PIL frees the GIL)."""
        if batch_size < 1:
            raise DataError(f"--batch-size {batch_size}: give 1 or more images per batch.")
        workers = workers or min(8, (os.cpu_count() or 2) + 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(self.samples), batch_size):
                chunk = self.samples[start : start + batch_size]
                images = list(pool.map(lambda s: _load(preprocess, s.path), chunk))
                yield np.stack(images), np.asarray([s.label for s in chunk], dtype=np.int64)


def _load(preprocess: Preprocess, path: Path) -> np.ndarray:
    try:
        return preprocess.load(path)
    except Exception as exc:  # PIL raises many types for a bad file
        raise DataError(f"cannot read image {path}: {exc}. Remove or replace the file.") from exc


def _interleave(samples: list[Sample]) -> list[Sample]:
    """Round-robin over classes, so `--limit 100` covers many classes, not the first few."""
    by_label: dict[int, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    groups = [by_label[k] for k in sorted(by_label)]
    out: list[Sample] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def open_dataset(
    root: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    synsets: list[str] | None = None,
    require_labels: bool = True,
) -> ImageDataset:
    """Open an ImageFolder or flat ILSVRC folder.

    Args:
        root: the data folder.
        labels: a ground-truth file for a flat folder; None means look for one of
            ``LOC_val_solution.csv``, ``val.txt``, ``ground_truth.txt`` in ``root``.
        synsets: the model's class list (wnids by index); None means ImageNet-1k.
        require_labels: False for calibration data, where labels are not needed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            path_problem(root, "data folder", folder=True)
            + "; pass --data with an image folder."
        )
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. Pass --data with an image folder.")
    synsets = synsets or imagenet_synsets()
    index = {wnid: i for i, wnid in enumerate(synsets)}

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name in index)
    if class_dirs and labels is None:
        samples = [Sample(p, index[d.name]) for d in class_dirs for p in _images_under(d)]
        if not samples:
            raise DataError(f"{root} has class folders but no images ({sorted(IMAGE_SUFFIXES)}).")
        return ImageDataset(samples, root, "imagefolder")

    images = _images_under(root)
    if not images:
        raise DataError(
            f"no images found under {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}). "
            "Expected DIR/<wnid>/*.JPEG (ImageFolder) or DIR/*.JPEG with a ground-truth file."
        )
    gt_path = (
        Path(labels)
        if labels
        else next((root / n for n in GROUND_TRUTH_NAMES if (root / n).is_file()), None)
    )
    if gt_path is None:
        if require_labels:
            raise DataError(
                f"{root} holds images but no labels: use ImageFolder class folders named by "
                f"wnid, or put a ground-truth file ({', '.join(GROUND_TRUTH_NAMES)}) beside "
                "them, or pass --labels FILE."
            )
        return ImageDataset([Sample(p, -1) for p in images], root, "unlabelled")
    truth = read_ground_truth(gt_path, index)
    by_stem = {p.stem: p for p in images}
    samples = []
    for name, label in truth.items():
        path = by_stem.get(Path(name).stem)
        if path is not None:
            samples.append(Sample(path, label))
    if not samples:
        raise DataError(
            f"none of the images in {root} is named in {gt_path} — pass the labels of these "
            "images (file names as they are in the folder)."
        )
    return ImageDataset(samples, root, "flat")


def read_ground_truth(path: Path, index: dict[str, int]) -> dict[str, int]:
    """``{file name: class index}`` from a val.txt-style or LOC_val_solution.csv file."""
    if not path.is_file():
        raise DataError(
            path_problem(path, "ground-truth file")
            + "; pass --labels with a val.txt or LOC_val_solution.csv."
        )
    try:
        return _read_ground_truth(path, index)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"labels file {path} is not text ({exc.reason} at byte {exc.start}); pass a "
            "'file_name wnid' list or LOC_val_solution.csv."
        ) from exc


def _read_ground_truth(path: Path, index: dict[str, int]) -> dict[str, int]:
    truth: dict[str, int] = {}
    with open(path, newline="") as f:
        if path.suffix.lower() == ".csv":
            for n, row in enumerate(csv.DictReader(f), 2):
                if "ImageId" not in row or "PredictionString" not in row:
                    raise DataError(f"{path}: expected columns ImageId,PredictionString.")
                tokens = (row["PredictionString"] or "").split()
                if not tokens:
                    raise DataError(
                        f"{path}:{n}: {row['ImageId']} has an empty PredictionString — give its "
                        "wnid first (ILSVRC's LOC_val_solution.csv layout)."
                    )
                truth[row["ImageId"]] = _label(tokens[0], index, path)
            return truth
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                if len(parts) == 1 and parts[0].isdigit():
                    raise DataError(
                        f"{path} lists bare class ids (the ILSVRC devkit format, whose ids are "
                        "not in synset order). Use 'file_name wnid' lines or LOC_val_solution.csv."
                    )
                raise DataError(f"{path}:{n}: expected '<file name> <wnid or class index>'.")
            label = _label(parts[1], index, path)
            if truth.setdefault(parts[0], label) != label:
                raise DataError(f"{path}:{n}: {parts[0]} is listed again with another label.")
    return truth


def _label(token: str, index: dict[str, int], path: Path) -> int:
    if token in index:
        return index[token]
    if token.isdigit() and int(token) < len(index):
        return int(token)
    raise DataError(
        f"{path}: label {token!r} is neither a known wnid nor a class index — use ImageNet wnids "
        "(n01440764) or indices 0-999."
    )


def sample_batch(
    preprocess: Preprocess, folder: str | os.PathLike[str] | None = None, n: int = 8
) -> tuple[np.ndarray | None, str]:
    """``n`` preprocessed images from ``folder`` (class-interleaved when labelled), and a
    description; ``(None, reason)`` when there is no such folder."""
    if folder is None or not Path(folder).is_dir():
        return None, f"no image folder ({folder})"
    dataset = open_dataset(folder, require_labels=False)
    samples = list(dataset.subset(n) if dataset.labelled else dataset)[:n]
    images = np.stack([_load(preprocess, s.path) for s in samples])
    return images, f"{len(images)} real images from {folder}"


def no_images_message(flag: str, data: str | Path) -> str:
    path = Path(data)
    if not path.exists():
        return f"{flag} {data} does not exist; check the path."
    if not path.is_dir():
        return f"{flag} {data} is a file, not a folder of images — pass the folder that holds it."
    return f"{flag} {data} holds no images (.jpg/.jpeg/.png...)."
