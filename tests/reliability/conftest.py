"""The reliability corpus: bad inputs made in code, each checked to end in one line
``edgevt: error: ...`` with exit 2, naming what is wrong, and leaving nothing half-written.

Cases call ``edgevt.cli.main`` in-process (no interpreter start-up per case) on a tiny zoo
model and a handful of real images; the world they break is built once per test process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgevt.data.imagenet import default_data_root

PARTIAL_MARKS = (".tmp", ".partial")


@dataclass(frozen=True)
class World:
    root: Path
    images: Path  # ImageFolder: 2 classes x 2 real images
    flat: Path  # the same images, no labels
    run: Path  # an fp32 ONNX export of the tiny model (manifest, fused.pt, model.onnx)
    onnx: Path
    fused: Path
    table: Path  # the tiny model's calibration table
    model: str  # the tiny zoo model's name

    def path(self, name: str) -> Path:
        """A fresh path under the world (its parent exists)."""
        p = self.root / "cases" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    from edgevt import api
    from tests.helpers import tiny_model

    val = default_data_root() / "imagenet-val1000"
    if not val.is_dir():
        pytest.skip(f"no ImageNet images at {val} (set EDGEVT_DATA)")
    root = tmp_path_factory.mktemp("reliability")
    images, flat = root / "images", root / "flat"
    flat.mkdir()
    for wnid in sorted(p.name for p in val.iterdir() if p.is_dir())[:2]:
        (images / wnid).mkdir(parents=True)
        for src in sorted((val / wnid).iterdir())[:2]:
            shutil.copy(src, images / wnid / src.name)
            shutil.copy(src, flat / src.name)
    model = tiny_model()
    out = api.export(model, out=root / "run", data=images, progress=False)
    table = root / "table.json"
    api.calibrate(model, data=images, calib_size=4, out=table, progress=False)
    return World(root, images, flat, out.run_dir.path, out.artifact, out.run_dir.path
                 / "fused.pt", table, model)  # fmt: skip


def case_table() -> tuple[dict[str, tuple[Callable, str]], Callable]:
    """``CASES, case = case_table()``: ``@case("keyword")`` on ``make(world, dir) -> argv``
    registers a case under its name (``_`` -> ``-``) with the keyword its error must name."""
    cases: dict[str, tuple[Callable, str]] = {}

    def case(keyword: str) -> Callable[[Callable], Callable]:
        def register(make: Callable) -> Callable:
            cases[make.__name__.replace("_", "-")] = (make, keyword)
            return make

        return register

    return cases, case


def partial_files(folder: Path) -> list[Path]:
    """What an interrupted or failed write would leave: temp files and .partial folders."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.name.endswith(PARTIAL_MARKS)]


def cli(argv: list, capsys) -> tuple[int, str]:
    from edgevt.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_clean_error(
    code: int, err: str, keyword: str, folder: Path | None = None, status: int = 2
) -> str:
    """One ``edgevt: error:`` line, last on stderr, naming ``keyword``; no traceback; exit
    ``status``; nothing partial under ``folder``. Returns the line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("edgevt: error:")]
    assert len(lines) == 1, err
    assert err.rstrip().splitlines()[-1] == lines[0], err
    assert code == status, (code, err)
    assert keyword.lower() in lines[0].lower(), f"{keyword!r} not in: {lines[0]}"
    if folder is not None:
        assert not partial_files(folder), partial_files(folder)
    return lines[0]


@pytest.fixture
def expect_error(world: World, capsys):
    """``expect_error(argv, keyword, folder=None)``: run the CLI and check its failure."""

    def check(argv: list, keyword: str, folder: Path | None = None, status: int = 2) -> str:
        code, err = cli(argv, capsys)
        return assert_clean_error(code, err, keyword, folder, status)

    return check


def copy_into(src: Path, d: Path, name: str = "run") -> Path:
    """A copy of ``src`` (file or folder) as ``d/name``, for a case to damage."""
    dst = d / name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def edited_table(world: World, d: Path, edit: Callable[[dict], None]) -> Path:
    """The world's calibration table with ``edit`` applied, as ``d/t.json``."""
    import json

    data = json.loads(world.table.read_text())
    edit(data)
    (d / "t.json").write_text(json.dumps(data))
    return d / "t.json"


def refused_leaving_nothing(case: tuple[Callable, str], name: str, world: World,
                            expect_error: Callable) -> str:  # fmt: skip
    """Run a ``case_table`` case in a fresh folder: one clear error, and nothing in the folder
    that was not there before (the run lock aside). Returns the error line."""
    make, keyword = case
    d = world.path(name)
    d.mkdir()
    argv = make(world, d)
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    line = expect_error(argv, keyword, folder=d)
    after = sorted(p.relative_to(d) for p in d.rglob("*") if p.name != ".edgevt.lock")
    assert [p for p in after if p not in before] == [], "refused, yet something was written"
    return line

