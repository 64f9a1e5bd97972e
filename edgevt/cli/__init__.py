"""`edgevt` command line: a thin shell over ``edgevt.api``, one module per command (or per
family of small commands).

Imports of torch and the backends happen inside the commands, so ``edgevt --help`` is quick
and works with no backend installed. Errors the user can fix print one line, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EPILOG = """\
examples:
  edgevt models
  edgevt export efficientnet_lite0 --pretrained --target onnx -o runs/lite0 \\
      --eval-data ../shared/data/imagenet-val1000
  edgevt eval runs/lite0/model.onnx --data ../shared/data/imagenet-val1000 --json
  edgevt fuse levit_128s --checkpoint LeViT-128S.pth -o runs/levit
  edgevt calibrate efficientnet_lite0 --pretrained --data ../shared/data/imagenet-sample1000 \\
      -o calib/efficientnet_lite0.json
  edgevt export efficientnet_lite0 --pretrained --int8 --calib-table calib/efficientnet_lite0.json
  edgevt export levit_128s --checkpoint w.pth --target tensorrt --int8 --calib DIR
  edgevt debug runs/lite0/model_int8.onnx --data ../shared/data/imagenet-sample1000
  edgevt profile runs/levit-tflite/model_int8.tflite --threads 1 2
  edgevt sweep configs/sweep.toml          # models x targets x precisions on Ray

Without --checkpoint a model gets random (non-degenerate) weights: fine for checking
numerics and speed, meaningless for accuracy.
"""


class Parser(argparse.ArgumentParser):
    """Usage errors in the one-line format every other error has."""

    def error(self, message: str) -> NoReturn:
        print(f"edgevt: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from edgevt import __version__
    from edgevt.cli import (
        bench,
        debug,
        deliver,
        eval,
        export,
        fuse,
        info,
        profile,
        qat,
        sweep,
    )

    parser = Parser(
        prog="edgevt",
        description="Take a trained vision transformer to an edge device, and "
        "prove what it costs in accuracy and gains in speed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edgevt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    info.add_parsers(sub)
    fuse.add_parsers(sub)
    qat.add_parser(sub)
    export.add_parsers(sub)
    eval.add_parser(sub)
    bench.add_parser(sub)
    debug.add_parser(sub)
    profile.add_parser(sub)
    deliver.add_parsers(sub)
    sweep.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from edgevt.errors import EdgevtError

    try:  # building the parser reads the target registry, plug-ins included
        parser = build_parser()
    except EdgevtError as exc:
        return _fail(exc, None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (printed by Parser.error), --help, --version
        return exc.code if isinstance(exc.code, int) else 2
    func: Callable[[argparse.Namespace], None] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        func(args)
    except KeyboardInterrupt:
        print(
            "edgevt: interrupted; finished artifacts are intact, nothing half-written.",
            file=sys.stderr,
        )
        return 130
    except Exception as exc:
        return _fail(exc, args.command)
    return 0


def _fail(exc: Exception, command: str | None) -> int:
    """One line on stderr: 2 for what the user can fix, 1 for a bug (EDGEVT_DEBUG=1: the
    traceback too)."""
    import os
    import traceback

    from edgevt.errors import as_edgevt_error

    if os.environ.get("EDGEVT_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    error = as_edgevt_error(exc)
    if error is not None:
        print(f"edgevt: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    where = f"`edgevt {command}`" if command else "edgevt"
    print(
        f"edgevt: error: internal error in {where}: {type(exc).__name__}: "
        f"{_one_line(str(exc), 300)} — a bug in edgevt; rerun with EDGEVT_DEBUG=1 for the "
        "traceback and report it.",
        file=sys.stderr,
    )
    return 1


def _one_line(text: str, width: int = 2000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
