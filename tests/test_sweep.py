"""`edgevt sweep`: expansion into `edgevt run` configs, its errors, the leaderboard, and (slow)
real sweeps on Ray: a two-node loopback cluster with a device node, and a killed sweep resumed.

Every Ray test runs inside its own network namespace (`unshare --net`: only loopback exists),
so nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from edgevt.errors import EdgevtError
from edgevt.leaderboard import leaderboard
from edgevt.pipeline import load_config
from edgevt.report import Report, Row, Timing
from edgevt.sweep import load_sweep, to_toml

REPO = Path(__file__).resolve().parent.parent
EDGEVT = Path(sys.executable).parent / "edgevt"


def _sweep_file(folder: Path, data_root: Path, body: str) -> Path:
    path = folder / "sweep.toml"
    path.write_text(
        f'out = "out"\n{body}\n[calibration]\ndata = "{data_root / "imagenet-sample1000"}"\n'
        f'[eval]\ndata = "{data_root / "imagenet-val1000"}"\nlimit = 64\n'
    )
    return path


MODELS = """
[[model]]
name = "efficientnet_lite0"
pretrained = true
[[model]]
name = "levit_128s"
"""


def test_a_sweep_expands_into_one_run_config_per_model_and_calibration(
    tmp_path: Path, data_root: Path
) -> None:
    path = _sweep_file(tmp_path, data_root, MODELS + """
[sweep]
targets = ["onnx", "tflite"]
precisions = ["fp32", "fp16", "int8"]
methods = ["percentile", "minmax"]
sizes = [32]
[[devices]]
name = "raspberry-pi-5"
""")  # fmt: skip
    plan = load_sweep(path)
    root, groups = plan.root, plan.groups
    assert root == tmp_path / "out"
    assert [g.name for g in groups] == [
        "efficientnet_lite0-percentile-32", "efficientnet_lite0-minmax-32",
        "levit_128s-percentile-32", "levit_128s-minmax-32",
    ]  # fmt: skip
    group = groups[1]
    config = load_config(group.config_path)  # what `edgevt run` reads: the same config
    assert config == group.config
    assert config["out"] == str(root / group.name)
    assert config["calibration"]["method"] == "minmax" and config["calibration"]["size"] == 32
    assert [(e["target"], e["int8"], e.get("precisions")) for e in config["export"]] == [
        ("onnx", True, None), ("tflite", True, ["fp16"]),  # ONNX offers no fp16: left out
    ]  # fmt: skip
    # the Pi's bundle is the export of its first runtime (LiteRT), not the first export
    assert config["devices"] == [{"name": "raspberry-pi-5", "run": "tflite-int8"}]


def test_the_example_sweep_expands(tmp_path: Path) -> None:
    plan = load_sweep(REPO / "configs" / "sweep.toml", out=tmp_path / "sweep")
    root, groups = plan.root, plan.groups
    assert [g.name for g in groups] == ["efficientnet_lite0", "levit_128s"]
    assert all((root / g.name / "run.toml").is_file() for g in groups)
    assert (plan.budget, plan.title) == (1.0, "edgevt sweep: sweep")  # what its report uses


def test_fp32_only_sweeps_need_no_calibration(tmp_path: Path, data_root: Path) -> None:
    path = _sweep_file(tmp_path, data_root, MODELS + '[sweep]\nprecisions = ["fp32"]\n')
    groups = load_sweep(path).groups
    assert [g.name for g in groups] == ["efficientnet_lite0", "levit_128s"]
    assert "calibration" not in groups[0].config
    assert groups[0].config["export"] == [{"target": "onnx", "int8": False}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (MODELS + "[sweeep]\n", "[sweeep]: unknown section; did you mean sweep?"),
        (MODELS + "[[export]]\ntarget = 'onnx'\n", "an `edgevt run` config?"),
        ("", "add at least one [[model]]"),
        (MODELS + MODELS, "two [[model]] tables are both 'efficientnet_lite0'; give each a label"),
        (MODELS + '[sweep]\ntargets = ["onnxx"]\n', "[sweep].targets"),
        (MODELS + '[sweep]\nprecisions = ["fp61"]\n', "no target of the sweep offers 'fp61'"),
        (MODELS + "[sweep]\nsizes = [0]\n", "[sweep].sizes = [0]: expected integers above 0"),
        (MODELS + "[sweep]\ntargets = 'onnx'\n", "[sweep].targets = 'onnx': expected a list"),
        ('[[model]]\nname = "levit_128s"\ncheckpoint = "missing.pth"\n', "model levit_128s"),
    ],
)
def test_a_bad_sweep_file_is_named_in_one_line(
    tmp_path: Path, data_root: Path, body: str, message: str
) -> None:
    with pytest.raises(EdgevtError) as caught:
        load_sweep(_sweep_file(tmp_path, data_root, body))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_configs_are_written_as_toml_that_reads_back() -> None:
    data = {"out": ".", "model": {"name": "levit_128s", "pretrained": False, "seed": 3},
            "export": [{"target": "onnx", "int8": True}, {"target": "tflite", "int8": False,
                                                           "precisions": ["fp16"]}],
            "bench": {"threads": [1, 2], "seconds": 0.5}, "report": {"title": 'a "quoted" one'}}
    assert tomllib.loads(to_toml(data)) == data  # fmt: skip


def _row(model: str, run: str, artifact: str, top1: float, weights: str = "real") -> Row:
    target = "pytorch" if artifact.startswith("PyTorch") else "onnx"
    return Row(run, model, weights, artifact, target, "fp32", top1)


def test_the_leaderboard_picks_the_fastest_file_within_the_budget() -> None:
    rows = [_row("m", "g/onnx-int8", "PyTorch (unfused)", 80.0),
            _row("m", "g/onnx-int8", "model.onnx", 80.0),
            _row("m", "g/onnx-int8", "model_int8.onnx", 79.5),
            _row("m", "g/tflite-int8", "model_int8.tflite", 77.0),
            _row("r", "r/onnx-int8", "PyTorch (unfused)", 0.0, "random"),
            _row("r", "r/onnx-int8", "model_int8.onnx", 0.0, "random")]  # fmt: skip
    timings = [Timing("g/onnx-int8", "m", "model.onnx", "fp32", "host", "ort", 1, 10.0, 11.0),
               Timing("g/onnx-int8", "m", "model_int8.onnx", "int8", "host", "ort", 1, 6.0, 7.0),
               Timing("g/tflite-int8", "m", "model_int8.tflite", "int8", "host", "lite", 1, 3.0,
                      3.5),
               Timing("r/onnx-int8", "r", "model_int8.onnx", "int8", "host", "ort", 1, 2.0,
                      2.5)]  # fmt: skip
    report = Report(rows, timings, [], {})
    board = {e["model"]: e for e in leaderboard(report, max_drop=1.0)}
    # the TFLite file is fastest but 3 points down: outside a 1-point budget
    assert (board["m"]["run"], board["m"]["artifact"]) == ("g/onnx-int8", "model_int8.onnx")
    assert board["m"]["drop"] == pytest.approx(0.5)
    assert board["r"]["random_weights"] and board["r"]["top1"] is None
    wide = {e["model"]: e for e in leaderboard(report, max_drop=5.0)}
    assert wide["m"]["artifact"] == "model_int8.tflite"


def test_without_ray_the_sweep_says_how_to_install_it(
    tmp_path: Path, data_root: Path, monkeypatch
) -> None:
    from edgevt.sweep import run_sweep

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    path = _sweep_file(tmp_path, data_root, MODELS + '[sweep]\nprecisions = ["fp32"]\n')
    with pytest.raises(EdgevtError, match=r"pip install 'edgevt\[ray\]'"):
        run_sweep(path, progress=False)


# --- real sweeps on Ray (slow) ----------------------------------------------------------------


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"],
                           capture_output=True)  # fmt: skip
    return probe.returncode == 0


def _need_ray() -> None:
    pytest.importorskip("ray")
    if not _namespaces_work():
        pytest.skip("Ray tests run in a private network namespace: needs unshare --net and ip")


CLUSTER_SWEEP = MODELS + """
[sweep]
targets = ["onnx", "tensorrt"]
precisions = ["fp32", "int8"]
sizes = [32]
[bench]
threads = [1]
seconds = 0.3
iterations = 5
[[devices]]
name = "raspberry-pi-5"
samples = 4
"""


def _reports_rows(path: Path, group: str | None = None) -> list[tuple]:
    """A report's accuracy rows; ``group``: only that group's, of a sweep report (runs named
    ``group/run``), under their own run names."""
    rows = json.loads(path.read_text())["rows"]
    if group is not None:
        rows = [{**r, "run": r["run"].removeprefix(f"{group}/")} for r in rows
                if r["run"].startswith(f"{group}/")]  # fmt: skip
    return sorted(
        (r["run"], r["artifact"], r["top1"], r["top5"], r["n"], r["agreement"], r["lost"],
         r["won"], round(r["cosine"], 5))
        for r in rows
    )  # fmt: skip


@pytest.mark.slow
def test_a_sweep_on_a_two_node_cluster_puts_device_work_on_the_device_node(
    tmp_path: Path, data_root: Path
) -> None:
    _need_ray()
    work = Path(os.path.realpath("/tmp")) / f"edgevt-ray-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        sweep = _sweep_file(tmp_path, data_root, CLUSTER_SWEEP)
        proc = subprocess.run(
            ["unshare", "--net", sys.executable, str(REPO / "tests" / "ray_cluster.py"),
             str(work), "--", "sweep", str(sweep)],
            capture_output=True, text=True, timeout=1500,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        cluster = json.loads((work / "cluster.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert cluster["returncode"] == 0, cluster["stderr"][-3000:]
    device_node = [n["id"] for n in cluster["nodes"] if "raspberry-pi-5" in n["resources"]]
    assert len(cluster["nodes"]) == 2 and len(device_node) == 1
    out = tmp_path / "out"
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    assert {c["status"] for c in cells} == {"done"}, cells
    # 2 models x (calibration + 2 exports, each fp32 + int8) + one device run per model
    assert len([c for c in cells if c["kind"] == "export"]) == 4
    devices = [c for c in cells if c["kind"] == "device"]
    assert len(devices) == 2 and {c["node"] for c in devices} == set(device_node)
    report = json.loads((out / "report" / "report.json").read_text())
    assert {t["where"] for t in report["timings"]} >= {"host"}
    assert any(t["where"].startswith("raspberry-pi-5") for t in report["timings"])
    assert {e["model"] for e in report["leaderboard"]} == {"efficientnet_lite0", "levit_128s"}
    # each group, run again alone by `edgevt run`, reports the same accuracy rows
    for group in ("efficientnet_lite0", "levit_128s"):
        alone = tmp_path / f"alone-{group}"
        alone.mkdir()
        shutil.copy(out / group / "run.toml", alone / "run.toml")
        subprocess.run([str(EDGEVT), "run", str(alone / "run.toml")], check=True,
                       capture_output=True, timeout=900)  # fmt: skip
        rows = _reports_rows(alone / "report" / "report.json")
        assert rows == _reports_rows(out / group / "report" / "report.json")
        assert rows == _reports_rows(out / "report" / "report.json", group)  # the merged one


@pytest.mark.slow
def test_a_killed_sweep_resumes_with_only_the_unfinished_cells(
    tmp_path: Path, data_root: Path
) -> None:
    _need_ray()
    sweep = _sweep_file(tmp_path, data_root, """
[[model]]
name = "efficientnet_lite0"
pretrained = true
[sweep]
targets = ["onnx", "tensorrt", "openvino"]
sizes = [32]
""")  # fmt: skip
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # sockets: paths < 108 bytes
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir), "HOME": str(tmp_path)}
    command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               str(EDGEVT), "sweep", str(sweep)]  # fmt: skip
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)  # fmt: skip
    finished = []
    for line in first.stdout:  # kill it as soon as one export is done
        if line.startswith("[done]"):
            finished.append(line.removeprefix("[done] ").rsplit(" (", 1)[0])
            if "export" in line:
                break
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    assert any("export" in c for c in finished), finished
    assert first.returncode != 0  # it did not get to finish
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    cells = json.loads((tmp_path / "out" / "sweep.json").read_text())["cells"]
    status = {c["cell"]: c["status"] for c in cells}
    assert {status[c] for c in finished} == {"skipped"}, (finished, status)
    assert sorted(status.values()).count("done") == len(status) - len(finished)
    # Ray's processes went with the killed sweep and with the finished one
    left = subprocess.run(["pgrep", "-f", str(ray_dir)], capture_output=True, text=True)
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert not left.stdout.strip(), left.stdout


def test_a_bad_group_writes_nothing(tmp_path: Path, data_root: Path) -> None:
    """The second model's checkpoint is missing: the error names it, and the first model's
    group was not written either."""
    path = _sweep_file(tmp_path, data_root, MODELS + """
[[model]]
name = "levit_128s"
label = "levit-mine"
checkpoint = "missing.pth"
""")  # fmt: skip
    with pytest.raises(EdgevtError, match="model levit-mine"):
        load_sweep(path)
    assert not (tmp_path / "out").exists()


def test_a_bundle_that_cannot_be_made_fails_its_device_cells_only(
    tmp_path: Path, data_root: Path, monkeypatch
) -> None:
    """The driver makes bundles itself: an error there is the device cells' failure, named,
    not the end of the sweep."""
    import edgevt.pipeline
    from edgevt.sweep import _Driver

    def no_bundle(*args, **kwargs):
        raise EdgevtError("the run holds no file raspberry-pi-5 runs")

    monkeypatch.setattr(edgevt.pipeline, "_bundles", no_bundle)
    path = _sweep_file(tmp_path, data_root, MODELS + """
[sweep]
precisions = ["fp32"]
[[devices]]
name = "raspberry-pi-5"
""")  # fmt: skip
    groups = load_sweep(path).groups
    driver = _Driver(groups[:1], force=False, log=lambda line: None, progress=False)
    driver._submit_devices(groups[0])
    [cell] = driver.cells
    assert cell.status == "failed" and "no file raspberry-pi-5 runs" in cell.error
