"""Run a device bundle on emulated ARM: a Debian 12 arm64 Python 3.11 (the Raspberry Pi OS
bookworm stack) under ``qemu-aarch64 -cpu <the device's core>``, so a bundle's files, its
runner and the device runtime's aarch64 kernels are proven before the bundle reaches a device.

What ``edgevt bundle --verify-aarch64`` does, all cached under ``$EDGEVT_CACHE`` (default
``~/.cache/edgevt``) after the first run:

1. A root file system: Python 3.11 and the libraries it needs, downloaded as Debian arm64
   packages with a private apt configuration (the host's apt state is not touched) and
   unpacked with ``dpkg -x`` (no maintainer scripts run; about 13 MB).
2. The aarch64 wheels of numpy and the bundle's runtimes (ai-edge-litert, onnxruntime),
   installed with ``pip --target``. Every manylinux tag is listed: pip does not widen explicit
   tags, and ai-edge-litert 2.x is tagged only ``manylinux_2_27_aarch64``.
3. The bundle's own ``run_bundle.py --check-only`` under ``qemu-aarch64 -cpu CORE -L ROOTFS``,
   with a fake ``/proc/cpuinfo`` for that core in the root file system: QEMU shows the host's
   x86 file, onnxruntime then crashes at import, and one for another core gives SIGILL.

Traps found on this machine (``../shared/FINDINGS.md``): ``-cpu max`` includes SME and gave
wrong int8 LiteRT output, so only named cores are offered (``cortex-x3``, Pixel 8's stand-in,
is ``max`` with SME off). Emulated time means nothing (fp32
is emulated in software): nothing here is ever a device timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.errors import EdgevtError

DEBIAN = "http://deb.debian.org/debian"
SUITE = "bookworm"  # Debian 12: Raspberry Pi OS's base, Python 3.11
PACKAGES = (
    "python3.11", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libexpat1", "zlib1g", "libffi8", "libssl3", "libbz2-1.0", "liblzma5",
    "libsqlite3-0", "libstdc++6", "libgcc-s1", "libuuid1", "libncursesw6", "libtinfo6",
    "libreadline8", "libdb5.3", "libcrypt1", "libnsl2", "libtirpc3", "libgssapi-krb5-2",
    "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1", "media-types",
)  # fmt: skip
# the aarch64 wheels each kind of bundled file needs (numpy always)
RUNTIME_WHEELS = {".tflite": ("ai-edge-litert",), ".onnx": ("onnxruntime",)}
WHEEL_TAGS = [f"manylinux_2_{v}_aarch64" for v in range(17, 37)] + ["manylinux2014_aarch64"]
FP32_MIN_COSINE = 0.99999  # an fp32 file on ARM kernels vs the host's logits
INT8_MIN_COSINE = 0.999  # an int8 file whose runtime has other int8 kernels on ARM (ORT)


@dataclass(frozen=True)
class Core:
    """What ``/proc/cpuinfo`` says on a real core of this kind (it must match ``-cpu``)."""

    part: int
    variant: int
    revision: int
    features: str
    qemu_cpu: str = ""  # QEMU's -cpu value where it differs from the core's name

    def cpuinfo(self, cpus: int = 4) -> str:
        return "\n".join(
            f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {self.features}\n"
            f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {self.variant:#x}\n"
            f"CPU part\t: {self.part:#05x}\nCPU revision\t: {self.revision}\n"
            for i in range(cpus)
        )  # fmt: skip


# QEMU 7.2 names no core with i8mm (Pixel 8's Tensor G3: Cortex-X3/A715/A510, Armv9-A). Its
# `max` without SME (SME gave wrong int8) and with 128-bit SVE like those cores has dotprod,
# i8mm, bf16 and SVE2, and LiteRT int8 is bit-exact on it: it stands in for the X3, its
# cpuinfo listing the features QEMU reports in AT_HWCAP/AT_HWCAP2 so both agree.
_X3 = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm ilrcpc flagm sb paca pacg dcpodp sve2 "
    "sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
    "i8mm bf16 rng bti mte"
)
_A76 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"  # noqa: E501
CORES = {
    "cortex-a76": Core(0xD0B, 0x4, 1, _A76),  # Raspberry Pi 5
    "cortex-a72": Core(0xD08, 0x0, 3, "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),  # Pi 4
    "neoverse-n1": Core(0xD0C, 0x3, 1, _A76 + " ssbs"),  # Graviton 2, Ampere Altra
    "cortex-x3": Core(0xD4E, 0x1, 0, _X3, "max,sme=off,sve-default-vector-length=16"),  # Pixel 8
}


def qemu_cpu(core: str) -> str:
    """What ``qemu-aarch64 -cpu`` is given for ``core``."""
    return CORES[core].qemu_cpu or core


def cache_dir() -> Path:
    root = os.environ.get("EDGEVT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgevt"  # fmt: skip
    return Path(root) / "aarch64"


def qemu() -> str:
    found = shutil.which("qemu-aarch64")
    if found is None:
        raise EdgevtError(
            "qemu-aarch64 is not installed, so the bundle cannot run on emulated ARM here: "
            "apt-get install qemu-user (Debian/Ubuntu; no binfmt set-up needed)."
        )
    return found


def _run(cmd: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        said = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[:300]
        raise EdgevtError(f"{what} failed ({said or f'exit code {proc.returncode}'}).")
    return proc


def _private_apt(work: Path, source: str, *options: str) -> list[str]:
    """``apt-get`` with its own sources, lists and cache under ``work`` and no dpkg state: it
    downloads without touching the host's apt configuration."""
    for sub in ("lists/partial", "cache/archives/partial"):
        (work / sub).mkdir(parents=True)
    (work / "sources.list").write_text(source + "\n")
    return [
        "apt-get", "-q", *options,
        "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
        "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null", "-o", "Dir::State::status=/dev/null",
        "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def core_for_device(device: str, core: str | None = None) -> str:
    """The core to emulate for a device profile (its ``core``, or the one given), checked, and
    qemu found: before any work is done."""
    from edgevt.devices import load_profile

    profile = load_profile(device)
    if profile.arch not in ("aarch64", "arm64"):
        raise EdgevtError(
            f"{profile.name} is an {profile.arch} device; emulation runs ARM ones "
            "(raspberry-pi-5, or a profile with arch = \"aarch64\")."
        )
    core = core or profile.core
    if not core:
        raise EdgevtError(
            f"device {profile.name} names no ARM core to emulate; pass --core "
            f"({', '.join(CORES)})."
        )
    qemu()
    return check_core(core)


def check_core(core: str) -> str:
    """``core`` if QEMU emulates it faithfully here, else the one-line refusal."""
    if core not in CORES:
        raise EdgevtError(
            f"no emulated core {core!r}; choose one of {', '.join(CORES)} (-cpu max with its "
            "SME is not offered: it gave wrong int8 results)."
        )
    return core


def _guest(core: str, names: list[str]) -> tuple[Path, Path]:
    """The root file system (its /proc/cpuinfo written for ``core``) and the site-packages
    that run the bundled files ``names``."""
    root = core_view(rootfs(), core)
    site = site_packages(sorted({w for n in names for w in RUNTIME_WHEELS[Path(n).suffix]}))
    return root, site


def core_view(root: Path, core: str) -> Path:
    """The root file system as one core shows it: a hard-linked copy (no extra space) whose
    own ``/proc/cpuinfo`` names that core, built once. One shared cpuinfo rewritten per run let
    two runs at once (a cortex-a72 count beside a cortex-a76 test) read each other's core, and
    XNNPACK then ran dot-product code on a core without it (SIGILL)."""
    text = CORES[core].cpuinfo()
    view = root.with_name(f"{root.name}-{core}")
    cpuinfo = view / "proc" / "cpuinfo"
    if cpuinfo.is_file() and cpuinfo.read_text() == text:
        return view
    with tempfile.TemporaryDirectory(prefix=f".{view.name}.", dir=root.parent) as tmp:
        work = Path(tmp) / "view"
        _run(["cp", "-al", str(root), str(work)], f"linking the root file system for {core}")
        mine = work / "proc" / "cpuinfo"
        mine.parent.mkdir(exist_ok=True)
        mine.unlink(missing_ok=True)  # a new file, never the linked one
        mine.write_text(text)
        if cpuinfo.is_file() and cpuinfo.read_text() == text:
            return view  # another run built it meanwhile (and may be using it): keep theirs
        if view.exists():  # an older view (another cpuinfo)
            shutil.rmtree(view, ignore_errors=True)
        try:
            os.replace(work, view)
        except OSError:  # another run built it first: theirs is the same
            pass
    return view


def rootfs(cache: Path | None = None) -> Path:
    """The Debian 12 arm64 Python 3.11 root file system, built once (atomically)."""
    folder = (cache or cache_dir()) / f"debian12-py311-{len(PACKAGES)}"
    if (folder / "usr" / "bin" / "python3.11").is_file():
        return folder
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise EdgevtError(
            "building the aarch64 root file system needs apt-get and dpkg (a Debian or Ubuntu "
            "host)."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rootfs.", dir=folder.parent) as tmp:
        work = Path(tmp)
        for sub in ("debs", "rootfs"):
            (work / sub).mkdir(parents=True)
        apt = _private_apt(work, f"deb [arch=arm64] {DEBIAN} {SUITE} main",
                           "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64")
        _run([*apt, "update"], f"apt-get update of Debian's arm64 index ({DEBIAN})")
        _run([*apt, "download", *PACKAGES], "downloading Debian's arm64 Python",
             cwd=work / "debs")  # fmt: skip
        for deb in sorted((work / "debs").glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(work / "rootfs")], f"unpacking {deb.name}")
        (work / "rootfs" / "proc").mkdir(exist_ok=True)
        if folder.exists():  # a half-built one from an older edgevt
            shutil.rmtree(folder)
        os.replace(work / "rootfs", folder)
    return folder


def site_packages(runtimes: list[str], cache: Path | None = None) -> Path:
    """numpy and ``runtimes`` (pip names) as aarch64 wheels in a folder for ``PYTHONPATH``."""
    import hashlib

    wanted = sorted({"numpy", *runtimes})
    key = hashlib.sha256(" ".join(wanted).encode()).hexdigest()[:12]
    folder = (cache or cache_dir()) / f"site-{key}"
    if (folder / ".complete").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tags = [a for tag in WHEEL_TAGS for a in ("--platform", tag)]
    target = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
              "--abi", "cp311", *tags]  # fmt: skip
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory(prefix=".site.", dir=folder.parent) as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        _run([*pip, "download", *target, "-d", str(wheels), *wanted],
             f"downloading the aarch64 wheels of {', '.join(wanted)}")  # fmt: skip
        files = [str(w) for w in sorted(wheels.glob("*.whl"))]
        _run([*pip, "install", "--no-deps", *target, "--target", str(site), *files],
             "installing the aarch64 wheels")  # fmt: skip
        (site / ".complete").write_text(" ".join(wanted) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(site, folder)
    return folder


# A TCG plugin: count executed guest instructions, print the count at every getppid() (the
# guest's marker around the loop it measures). One vCPU thread: the inline add is exact.
PLUGIN_C = r"""
#include <inttypes.h>
#include <stdio.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;
static uint64_t insns;

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8) {
    if (num == 173) { /* getppid on aarch64 */
        fprintf(stderr, "EDGEVT_INSNS %" PRIu64 "\n", insns);
        fflush(stderr);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv) {
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
"""
# Runs in the emulated Python: loads one bundled file with the bundle's own Model class, warms
# it, and brackets N inferences with getppid() markers.
GUEST_COUNT = """
import os, runpy, sys
from pathlib import Path
import numpy as np
bundle, name, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
model = runpy.run_path(str(bundle / "run_bundle.py"), run_name="edgevt_count")["Model"](
    bundle / "models" / name, 1)
x = np.load(bundle / "samples.npz")["inputs"][:1]
model.infer(x); model.infer(x)
os.getppid()
for _ in range(n):
    model.infer(x)
os.getppid()
"""


def counting_plugin(cache: Path | None = None) -> Path:
    """The instruction-counting plugin, built once against the installed QEMU's own
    ``qemu-plugin.h`` (Debian ships no header: it comes from the qemu source package)."""
    version = _run(["dpkg-query", "-W", "-f=${source:Version}", "qemu-user"],
                   "reading the installed qemu-user version").stdout.strip()  # fmt: skip
    folder = (cache or cache_dir()) / f"plugin-{version.replace(':', '_')}"
    plugin = folder / "count.so"
    if plugin.is_file():
        return plugin
    if shutil.which("gcc") is None:
        raise EdgevtError("counting instructions builds a QEMU plugin: apt-get install gcc.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".plugin.", dir=folder.parent) as tmp:
        work = Path(tmp)
        for sub in ("src", "out"):
            (work / sub).mkdir(parents=True)
        apt = _private_apt(work, f"deb-src {DEBIAN} {SUITE} main")
        _run([*apt, "update"], "apt-get update of Debian's source index")
        _run([*apt, "source", "--download-only", f"qemu={version}"],
             f"downloading QEMU {version}'s source (its qemu-plugin.h)",
             cwd=work / "src")  # fmt: skip
        orig = next((work / "src").glob("qemu_*.orig.tar.xz"))
        _run(["tar", "-xJf", str(orig), "-C", str(work / "src"), "--wildcards",
              "*/include/qemu/qemu-plugin.h"], "unpacking qemu-plugin.h")  # fmt: skip
        header = next((work / "src").glob("*/include/qemu/qemu-plugin.h"))
        (work / "out" / "count.c").write_text(PLUGIN_C)
        _run(["gcc", "-shared", "-fPIC", "-O2", "-I", str(header.parent), "-o",
              str(work / "out" / "count.so"), str(work / "out" / "count.c")],
             "compiling the instruction-counting plugin")  # fmt: skip
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work / "out", folder)
    return plugin


def count_instructions(bundle: Path, core: str, names: list[str], n: int = 3) -> dict[str, int]:
    """aarch64 instructions per inference of each bundled file on ``core`` (1 thread, after
    two warm-up runs, the mean of ``n``): what XNNPACK's kernel choice for that core costs.
    An instruction count under emulation, not a time."""
    import re

    plugin = counting_plugin()
    root, site = _guest(check_core(core), names)
    counts = {}
    for name in names:
        proc = subprocess.run(
            [qemu(), "-cpu", qemu_cpu(core), "-plugin", str(plugin), "-L", str(root),
             "-E", f"PYTHONPATH={site}", str(root / "usr" / "bin" / "python3.11"), "-c",
             GUEST_COUNT, str(bundle), name, str(n)],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        marks = [int(v) for v in re.findall(r"EDGEVT_INSNS (\d+)", proc.stderr)]
        if proc.returncode != 0 or len(marks) < 2:
            said = " ".join(proc.stderr.strip().splitlines()[-2:])[:300]
            raise EdgevtError(f"counting instructions of {name} on {core} failed: {said}")
        counts[name] = (marks[-1] - marks[-2]) // n
    return counts


def count_files(
    files: dict[str, Path], core: str, x: np.ndarray, n: int = 1,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, int]:
    """aarch64 instructions per inference of loose files (an op-type profile's variants) on
    ``core``: each counted through a throwaway bundle of its own (the runner, the file, the
    input ``x``), as ``count_instructions`` counts a bundle's files."""
    from edgevt.bundle import RUNNER

    counts = {}
    with tempfile.TemporaryDirectory(prefix="edgevt-count-") as tmp:
        for i, (key, path) in enumerate(files.items(), 1):
            folder = Path(tmp) / f"b{i}"
            (folder / "models").mkdir(parents=True)
            os.symlink(Path(path).resolve(), folder / "models" / path.name)
            shutil.copy2(RUNNER, folder / "run_bundle.py")
            (folder / "bundle.json").write_text(json.dumps({"models": {path.name: {}}}))
            np.savez(folder / "samples.npz", inputs=np.ascontiguousarray(x[:1], np.float32))
            counts[key] = count_instructions(folder, core, [path.name], n)[path.name]
            progress(f"counted {key} on emulated {core} ({i}/{len(files)})")
    return counts


@dataclass
class ModelCheck:
    artifact: str
    precision: str
    backend: str
    cosine: float
    max_abs_diff: float
    tolerance: str  # what it had to meet
    passed: bool


@dataclass
class Verification:
    bundle: str
    core: str
    results: str  # the results JSON run_bundle.py wrote (labelled emulated)
    seconds: float
    checks: list[ModelCheck] = field(default_factory=list)
    not_emulated: list[str] = field(default_factory=list)  # "file: why"
    # aarch64 instructions per inference (emulated; a count, not a time), where asked for
    instructions: dict[str, int] = field(default_factory=dict)
    # per file, where asked for: run_bundle.py's accuracy on the bundle's labelled images
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def grid_step(logits: np.ndarray) -> float:
    """The spacing of the values an int8 output can take, read off the host's own logits (the
    smallest gap between distinct values); for a float output it is tiny and asks for
    near-exactness."""
    values = np.unique(logits.astype(np.float64))
    gaps = np.diff(values)
    gaps = gaps[gaps > 1e-12]
    return float(gaps.min()) if gaps.size else 0.0


SECONDS_PER_IMAGE = 10.0  # the most one scored image may take under emulation (fp32 Lite0: 2.5)


def verify(
    bundle: Path, core: str, threads: int = 1, timeout: float = 1800, score: bool = False
) -> Verification:
    """Run ``bundle``'s own runner under ``qemu-aarch64 -cpu core`` and hold every file it
    runs to the host's logits: fp32 at cosine >= 0.99999; LiteRT int8 bit-exact or within one
    step of its output grid (its int8 kernels are integer arithmetic); ONNX Runtime int8, and
    LiteRT int8 with float ops, at cosine >= 0.999 with the same top-1 (other int8 kernels on
    ARM than on x86; float kernels that differ in the last bits).
    ``score``: also score the bundle's labelled images on ARM code (slow: QEMU runs float
    vector code an element at a time), recorded as the emulated run's accuracy."""
    import time

    from edgevt.targets.tflite_profile import float_compute_ops

    check_core(core)
    bundle = Path(bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    models, skipped = [], []
    for name in meta["models"]:
        suffix = Path(name).suffix
        if suffix in RUNTIME_WHEELS:
            models.append(name)
        else:
            skipped.append(f"{name}: no aarch64 runtime for {suffix} files under emulation here")
    if not models:
        raise EdgevtError(
            f"{bundle} holds no file this host can run on emulated aarch64 (it runs "
            f"{', '.join(RUNTIME_WHEELS)}): {'; '.join(skipped)}."
        )
    images = meta.get("eval", {}).get("images", 0) if score else 0
    if score and not images:
        raise EdgevtError(
            f"{bundle} carries no labelled images to score; make it with --eval-images N."
        )
    binary = qemu()
    root, site = _guest(core, models)
    label = f"aarch64 ({core})"
    out = bundle / "results"
    before = set(out.glob("*.json")) if out.is_dir() else set()
    start = time.perf_counter()
    proc = subprocess.run(
        [binary, "-cpu", qemu_cpu(core), "-L", str(root), "-E", f"PYTHONPATH={site}",
         str(root / "usr" / "bin" / "python3.11"), str(bundle / "run_bundle.py"),
         "--threads", str(threads), "--no-timing" if images else "--check-only",
         "--emulated", label, "--models", *models],
        capture_output=True, text=True, timeout=timeout + SECONDS_PER_IMAGE * images * len(models),
        cwd=bundle,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    written = sorted(set(out.glob("*.json")) - before) if out.is_dir() else []
    if not written:
        said = " ".join(proc.stderr.strip().splitlines()[-3:])[:400]
        raise EdgevtError(
            f"run_bundle.py did not finish on emulated {label} (exit code {proc.returncode}): "
            f"{said}"
        )
    results = json.loads(written[-1].read_text())
    samples = np.load(bundle / "samples.npz")
    verification = Verification(str(bundle), core, str(written[-1]), seconds,
                                not_emulated=skipped)  # fmt: skip
    for row in results["results"]:
        name = row["artifact"]
        expected = samples[meta["models"][name]["expected"]]
        check = row["check"]
        if row["precision"] != "int8":
            ok = check["cosine"] >= FP32_MIN_COSINE
            tolerance = f"cosine >= {FP32_MIN_COSINE}"
        elif not name.endswith(".tflite") or float_compute_ops(bundle / "models" / name):
            # ONNX Runtime's int8 kernels are not the same code on x86 (u8s8, VNNI) and ARM
            # (dotprod): the real Lite0 read cosine 0.99977 to x86, not bit-exact. A LiteRT
            # file with float ops runs ARM's float kernels there, last bits apart (a float
            # classifier's logits have no int8 grid to be within a step of)
            ok = check["cosine"] >= INT8_MIN_COSINE and check["top1_agreement"] == 1.0
            why = "float ops" if name.endswith(".tflite") else "another int8 kernel"
            tolerance = f"cosine >= {INT8_MIN_COSINE}, same top-1 ({why})"
        else:
            step = grid_step(expected)
            ok = check["max_abs_diff"] <= step * 1.001 and check["top1_agreement"] == 1.0
            tolerance = f"max |diff| <= one output step ({step:.3g})"
        verification.checks.append(ModelCheck(
            name, row["precision"], row["backend"], check["cosine"], check["max_abs_diff"],
            tolerance, bool(ok)))  # fmt: skip
        if "accuracy" in row:
            verification.accuracy[name] = row["accuracy"]
    return verification


INSTRUCTIONS = "instructions_{device}_{core}.json"  # in the run: what `edgevt report` reads


def instruction_profile(
    artifact: Path, device: str, core: str | None = None, progress: bool = True
) -> tuple[dict[str, Any], Path]:
    """aarch64 instructions per inference of a run's files (or one file) for a device's core:
    the run bundled for that device in a temporary folder, each file counted under emulation
    (1 thread). Written to ``RUN/instructions_<device>_<core>.json``; an ARM cost estimate
    where no device has been measured, never a time."""
    from edgevt.bundle import make_bundle
    from edgevt.io import write_json
    from edgevt.progress import step

    path = Path(artifact)
    if not path.exists():
        raise EdgevtError(f"{path} does not exist; give a run directory or one of its files.")
    core = core_for_device(device, core)
    run = path if path.is_dir() else path.parent
    with tempfile.TemporaryDirectory(prefix="edgevt-emulate-") as tmp:
        made = make_bundle(run, device, Path(tmp) / "bundle", samples=1)
        names = made.models if path.is_dir() else [path.name]
        if path.is_file() and path.name not in made.models:
            raise EdgevtError(
                f"{path.name} is not a file {device} runs (its bundle holds "
                f"{', '.join(made.models)}); give one of those, or the run."
            )
        what = (f"counting aarch64 instructions per inference on emulated {core} (the first "
                "run downloads Debian arm64 Python and the runtimes' wheels)")  # fmt: skip
        with step(what, progress):
            counts = count_instructions(made.path, core, names)
    from edgevt.targets import read_artifact_info

    files = {
        name: {"instructions": n, "precision": read_artifact_info(run / name).precision}
        for name, n in counts.items()
    }
    data = {"format": "edgevt.instructions/1", "device": device, "core": core, "threads": 1,
            "files": files, "note": "instructions per inference under emulation, not a time"}
    written = write_json(run / INSTRUCTIONS.format(device=device, core=core), data)
    return data, written
