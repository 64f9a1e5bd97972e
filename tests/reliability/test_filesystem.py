"""File-system trouble and concurrent runs: a full disk, a read-only folder, paths in the way,
a second writer, files left by killed runs, and what EDGEVT_DEBUG and a bug look like."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import cli, partial_files


def _mount(where: Path, options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr}")
    return where


@pytest.fixture
def disk(tmp_path):
    """``disk(kib)``: a tmpfs of that size; ``disk(0)``: one that is already full."""
    mounts: list[Path] = []

    def make(kib: int) -> Path:
        where = _mount(tmp_path / f"disk{len(mounts)}", f"size={max(kib, 4)}k")
        mounts.append(where)
        if kib == 0:  # fill it: every later write fails with ENOSPC
            with open(where / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 4096)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def read_only(tmp_path):
    where = _mount(tmp_path / "ro", "size=64k,ro")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _commands(world, out: Path) -> dict[str, list]:
    """One writing command of each kind, writing to ``out``."""
    return {
        "export": ["export", world.model, "-o", out / "run"],
        "fuse": ["fuse", world.model, "-o", out / "run"],
        "calibrate": ["calibrate", world.model, "--data", world.images, "--calib-size", "2",
                      "-o", out / "table.json"],
        "bench": ["bench", world.onnx, "--seconds", "0.01", "--iterations", "1", "--warmup", "0",
                  "-o", out / "bench"],
        "report": ["report", world.run, "-o", out / "report"],
        "bundle": ["bundle", world.run, "--device", "x86-host", "--samples", "1", "--data",
                   world.images, "-o", out / "bundle"],
        "qat": ["qat", world.model, "--data", world.images, "--calib-table", world.table,
                "--steps", "1", "--batch", "2", "--device", "cpu", "-o", out / "run"],
    }  # fmt: skip


COMMANDS = ["export", "fuse", "calibrate", "bench", "report", "bundle", "qat"]


@pytest.fixture(scope="module", autouse=True)
def _reported(world):
    """The world's run needs a bench result for `edgevt report` to have something to show."""
    from edgevt import api

    api.bench([world.onnx], threads=[1], seconds=0.01, iterations=1, warmup=0)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_is_one_line_and_leaves_nothing_partial(command, world, disk, capsys):
    out = disk(0)
    code, err = cli(_commands(world, out)[command], capsys)
    from tests.reliability.conftest import assert_clean_error

    assert_clean_error(code, err, "disk is full", out)


@pytest.mark.parametrize("kib", [8, 48, 96])
def test_an_export_that_runs_out_of_space_midway(kib, world, disk, capsys):
    """Room for some files, not all: the error names the disk, no temp file survives."""
    from tests.reliability.conftest import assert_clean_error

    out = disk(kib)
    code, err = cli(["export", world.model, "-o", out / "run"], capsys)
    assert_clean_error(code, err, "disk is full", out)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_folder_is_one_line(command, world, read_only, capsys):
    from tests.reliability.conftest import assert_clean_error

    code, err = cli(_commands(world, read_only)[command], capsys)
    assert_clean_error(code, err, "read-only", read_only)


def test_a_file_size_limit_is_one_line(world, tmp_path, capsys):
    """RLIMIT_FSIZE (ulimit -f): writes past it fail with EFBIG once SIGXFSZ is ignored."""
    from tests.reliability.conftest import assert_clean_error

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        code, err = cli(["export", world.model, "-o", tmp_path / "run"], capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert_clean_error(code, err, "ulimit", tmp_path)


@pytest.mark.parametrize("command", ["export", "fuse", "qat", "report", "bundle", "bench"])
def test_out_naming_an_existing_file(command, world, tmp_path, expect_error):
    argv = _commands(world, tmp_path)[command]
    target = Path(argv[-1])
    target.write_text("precious")
    expect_error(argv, str(target.name), folder=tmp_path)
    assert target.read_text() == "precious", "the user's file was overwritten"


@pytest.mark.parametrize("command", ["export", "calibrate", "report", "bundle"])
def test_out_below_a_file(command, world, tmp_path, expect_error):
    (tmp_path / "afile").write_text("x")
    argv = _commands(world, tmp_path / "afile")[command]
    expect_error(argv, "afile", folder=tmp_path)


def test_calibration_output_that_is_a_folder(world, tmp_path, expect_error):
    (tmp_path / "table.json").mkdir()
    argv = _commands(world, tmp_path)["calibrate"]
    expect_error(argv, "folder", folder=tmp_path)


def test_a_second_writer_of_the_same_run_directory_is_refused(world, tmp_path, expect_error):
    """Another process holds the run directory (its lock): this one stops before writing."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(run / '.edgevt.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        line = expect_error(["export", world.model, "-o", run], "another edgevt process")
        assert str(holder.pid) in line
        assert sorted(p.name for p in run.iterdir()) == [".edgevt.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_run_directory_is_free_again_after_a_failure(world, tmp_path, capsys):
    """The lock goes with the command: a failed export does not block the next one."""
    run = tmp_path / "run"
    code, _ = cli(["export", world.model, "--int8", "--calib", tmp_path / "none", "-o", run],
                  capsys)  # fmt: skip
    assert code == 2
    code, err = cli(["export", world.model, "-o", run], capsys)
    assert code == 0, err


def test_temp_files_of_killed_runs_are_removed(world, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".model.onnx.k3j2.tmp", run / "bench" / ".result.json.x1.tmp",
             run / "device.json.tmp"]  # fmt: skip
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half")
    (run / ".model.mlpackage.q9.tmp").mkdir()
    (run / ".model.mlpackage.q9.tmp" / "weight.bin").write_bytes(b"half")
    keep = run / "notes.txt"
    keep.write_text("mine")
    code, err = cli(["export", world.model, "-o", run], capsys)
    assert code == 0, err
    assert not partial_files(run) and keep.read_text() == "mine"


def test_a_killed_export_leaves_no_partial_file_and_reruns(world, tmp_path):
    """SIGKILL in the middle of an export (a real process): nothing half-written; a re-run
    of the same command succeeds and cleans up."""
    run = tmp_path / "run"
    code = (
        "import sys, time; sys.path.insert(0, '.')\n"
        "from tests.helpers import tiny_model\n"
        "import edgevt.targets.onnx as onnx_target\n"
        "real = onnx_target.export_onnx\n"
        "def slow(*a, **k):\n"
        "    out = real(*a, **k); print('exported', flush=True); time.sleep(60); return out\n"
        "onnx_target.export_onnx = slow\n"
        "from edgevt.cli import main\n"
        f"main(['export', tiny_model(), '-o', {str(run)!r}, '--int8', '--calib', "
        f"{str(world.images)!r}, '--calib-size', '2'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])  # fmt: skip
    try:
        assert "exported" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()
    assert not partial_files(run)
    from edgevt.cli import main

    assert main(["export", world.model, "-o", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert "export" in manifest["stages"]


def test_edgevt_debug_shows_the_traceback(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEVT_DEBUG", "1")
    code, err = cli(["eval", tmp_path / "none.onnx", "--data", world.images], capsys)
    assert code == 2 and "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("edgevt: error:")


def test_a_bug_is_one_line_that_says_so(world, capsys, monkeypatch):
    from edgevt import api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(api, "evaluate", broken)
    code, err = cli(["eval", world.onnx, "--data", world.images], capsys)
    from tests.reliability.conftest import assert_clean_error

    line = assert_clean_error(code, err, "internal error", status=1)
    assert "ZeroDivisionError" in line and "EDGEVT_DEBUG=1" in line


def test_keyboard_interrupt_exits_130(world, capsys, monkeypatch):
    from edgevt import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "evaluate", interrupted)
    code, err = cli(["eval", world.onnx, "--data", world.images], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err

