"""The TFLite side of the int8 op-type profile (``edgevt.op_profile``): one int8 file per op
type with that type kept in float, each quantized from the same fp32 file and table as the
full-int8 one, plus the group of types that leaves the fewest XNNPACK partitions, measured with
LiteRT on this host."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevt.artifact import ArtifactInfo
from edgevt.errors import EdgevtError
from edgevt.op_profile import (
    COUNTS,
    MS,
    OpProfile,
    Variant,
    default_threads,
    host_label,
    latency_types,
    measure,
)

# Ops that move or reshape data: the quantizer gives them their input's scale, so keeping them
# float only adds QUANTIZE/DEQUANTIZE pairs around them. Not worth a file each.
LAYOUT_OPS = {"RESHAPE", "TRANSPOSE", "STRIDED_SLICE", "SLICE", "SPLIT", "CONCATENATION",
              "PACK", "UNPACK", "GATHER", "GATHER_ND", "PAD", "PADV2", "BROADCAST_TO",
              "QUANTIZE", "DEQUANTIZE"}  # fmt: skip
CHECK_IMAGES = 16  # calibration images the cosine to fp32 is taken on


def census(path: Path) -> Counter:
    """Op types of a .tflite and how many of each."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgevt.quant.tflite_ranges import read_ops

    return Counter(op.op_type for op in read_ops(fu.read_model(str(path))))


def float_compute_ops(path: Path) -> Counter:
    """Op types of an int8 .tflite that still compute in float (float outputs; QUANTIZE and
    DEQUANTIZE aside): an --optimize recipe's float ops. Empty for a full-int8 file, whose
    integer kernels give the same bytes on every CPU; float kernels differ in the last bits."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgevt.quant.tflite_ranges import read_ops

    model = fu.read_model(str(path))
    tensors = model.subgraphs[0].tensors
    float32 = 0  # TensorType.FLOAT32 in LiteRT's schema
    return Counter(
        op.op_type for op in read_ops(model)
        if op.op_type not in ("QUANTIZE", "DEQUANTIZE")
        and any(t >= 0 and tensors[t].type == float32 for t in op.outputs)
    )  # fmt: skip


@dataclass
class Candidates:
    """The files an op-type profile measures, by key (``fp32``, ``full int8``, each op type,
    ``group``): what each keeps in float, its XNNPACK partitions here, the fp32 op census."""

    files: dict[str, Path]
    float_types: dict[str, list[str]]
    partitions: dict[str, int | None]
    census: dict[str, int]
    write: Callable[[Path, tuple[str, ...]], Any] | None = None  # writes one more file ...
    work: Path | None = None  # ... in here

    def label(self, key: str) -> str:
        types = self.float_types[key]
        if key in ("fp32", FULL):
            return key
        return f"int8, {' '.join(types)} float" + (" (fewest partitions)" * (key == GROUP))


def candidates(
    fp32: Path,
    full_int8: Path,
    quantize_with: Callable[[Path, tuple[str, ...]], Any],
    work: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> Candidates:
    """Write into ``work`` one int8 file per op type of ``fp32`` that is not a layout op, with
    that type in float, and the group of types with the fewest XNNPACK partitions.
    ``quantize_with(out, float_types)`` writes such a file as ``full_int8`` was written."""
    ops = census(fp32)
    types = sorted(t for t in ops if t not in LAYOUT_OPS)
    files = {"fp32": fp32, FULL: full_int8}
    float_types: dict[str, list[str]] = {"fp32": [], FULL: []}
    for i, op_type in enumerate(types, 1):
        progress(f"int8 with {op_type} in float ({i}/{len(types)})")
        path = work / f"int8_float_{op_type.lower()}.tflite"
        quantize_with(path, (op_type,))
        files[op_type], float_types[op_type] = path, [op_type]
    parts = {key: partitions(path) for key, path in files.items()}
    group = fewest_partitions(
        {t: parts[t] for t in types}, parts[FULL],
        lambda chosen: _counted_file(work, chosen, quantize_with), progress,
    )  # fmt: skip
    if group is not None:
        float_types[GROUP], parts[GROUP], files[GROUP] = group
    return Candidates(files, float_types, parts, dict(sorted(ops.items())), quantize_with, work)


def assemble(
    found: Candidates, measured: dict[str, tuple[dict[int, float], float]], model: str,
    where: str, threads: list[int], unit: str = MS,
) -> OpProfile:  # fmt: skip
    """The OpProfile of ``found``'s files from what was measured of each: (cost per thread
    count, cosine to fp32) by key."""

    def variant(key: str) -> Variant:
        ms, cosine = measured[key]
        return Variant(found.label(key), found.float_types[key], ms, cosine,
                       found.partitions.get(key))  # fmt: skip

    singles = [k for k in found.files if k not in ("fp32", FULL, GROUP)]
    return OpProfile(
        model=model, target="tflite", host=where, threads=list(threads), census=found.census,
        fp32=variant("fp32"), full=variant(FULL), types=[variant(k) for k in singles],
        unit=unit, groups=[variant(GROUP)] if GROUP in found.files else [],
    )  # fmt: skip


def profile(
    fp32: Path,
    full_int8: Path,
    info: ArtifactInfo,
    quantize_with: Callable[[Path, tuple[str, ...]], Any],
    images: np.ndarray,
    threads: list[int] | None = None,
    progress: Callable[[str], None] = lambda _: None,
    core: str | None = None,
) -> OpProfile:
    """Measure the int8 cost of every op type of ``fp32`` that is not a layout op (and of the
    fewest-partitions group: ``candidates``), on this host.

    The variants live in a temporary folder. With ``core`` (an ARM core, e.g. cortex-a76) the
    cost is aarch64 instructions per inference on that emulated core (1 thread), not host
    time: the profile of a device not at hand.
    """
    work = Path(tempfile.mkdtemp(prefix=".op-profile-", dir=full_int8.parent))
    try:
        found = candidates(fp32, full_int8, quantize_with, work, progress)
        return measure_candidates(found, info, images, threads, core, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_candidates(
    found: Candidates, info: ArtifactInfo, images: np.ndarray,
    threads: list[int] | None = None, core: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> OpProfile:  # fmt: skip
    """Time ``found``'s files here (or count them on the emulated ``core``) and score them
    against fp32 on ``CHECK_IMAGES`` of ``images``."""
    from edgevt.targets.tflite import LiteRTRunner

    threads = threads or default_threads()
    checked = images[:CHECK_IMAGES]
    where, unit = host_label(), MS

    def run(files: dict[str, Path]) -> dict[str, tuple[dict[int, float], float]]:
        if core is None:
            return measure(files, lambda p, t: LiteRTRunner(p, threads=t, info=info),
                           checked[:1], checked, threads, progress)  # fmt: skip
        return counted(files, info, checked, core, progress)

    if core is not None:
        threads, where, unit = [1], f"emulated aarch64 ({core})", COUNTS
    profile = assemble(found, run(found.files), info.model, where, threads, unit)
    return head_to_head(profile, found, run, progress)


def head_to_head(
    profile: OpProfile, found: Candidates,
    run: Callable[[dict[str, Path]], dict[str, tuple[dict[int, float], float]]],
    progress: Callable[[str], None] = lambda _: None,
) -> OpProfile:  # fmt: skip
    """The latency types' own file, measured again beside full int8 (and the group): the
    profile's figures for both then come from that run, in the first run's terms (scaled by
    full int8's time in each). Their per-type time is a sum of separately measured savings,
    which counts twice what two types save together: one CvT-13 profile kept the per-type set,
    predicted faster than the group's measured time, and that file ran at 1.99x fp32 at 2
    threads (reports/int8_recipes.md) where other runs took the group. And a type that one
    noisy round made look faster in float is timed again before choose() keeps it."""
    types = sorted(latency_types(profile))
    if not types or found.write is None or found.work is None:
        return profile
    group = profile.groups[0] if profile.groups else None
    own_file = group is None or types != sorted(group.float_types)
    timed = profile.unit == MS  # instruction counts do not drift: only a new file is counted
    if not own_file and not timed:
        return profile
    files = {"fp32": found.files["fp32"]}
    if timed:
        files[FULL] = found.files[FULL]
        if group is not None:
            files[GROUP] = found.files[GROUP]
    if own_file:
        files[LATENCY] = found.work / "int8_latency_types.tflite"
        progress(f"int8 with {' '.join(types)} in float, measured again beside full int8")
        found.write(files[LATENCY], tuple(types))
    again = run(files)

    def scaled(key: str) -> dict[int, float]:
        if not timed:
            return again[key][0]
        return {t: ms * profile.full.ms[t] / again[FULL][0][t] for t, ms in again[key][0].items()}

    if group is not None and timed:
        group.ms, group.cosine = scaled(GROUP), again[GROUP][1]
    if own_file:
        profile.groups.append(Variant(f"int8, {' '.join(types)} float (the per-type recipe)",
                                      types, scaled(LATENCY), again[LATENCY][1],
                                      partitions(files[LATENCY])))  # fmt: skip
    return profile


def is_device_results(value: str) -> bool:
    """Whether ``--profile-on VALUE`` names a results file (else a device profile's name)."""
    return value.endswith(".json") or Path(value).is_file()


def from_device_results(path: Path) -> tuple[OpProfile, str]:
    """The op-type profile a device timed itself (``run_bundle.py --op-profile``'s results
    file; cosines and partitions from the host that made the bundle) and the device's name."""
    import json

    hint = ("time it on the device with `python3 run_bundle.py --op-profile` in a bundle made "
            "by `edgevt bundle RUN --device DEVICE --op-profile`")  # fmt: skip
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EdgevtError(f"--profile-on {path}: cannot read it ({exc}); {hint}.") from exc
    section = data.get("op_profile") if isinstance(data, dict) else None
    if not isinstance(section, dict) or "ms" not in section:
        raise EdgevtError(f"--profile-on {path} holds no op profile timed on a device; {hint}.")
    if data.get("emulated"):
        raise EdgevtError(f"--profile-on {path} was run under emulation ({data['emulated']}): "
                          "its times mean nothing; use --profile-on DEVICE to count "
                          "instructions instead, or run the bundle on the device.")  # fmt: skip
    try:
        keys = list(section["files"])
        found = Candidates({k: Path(section["files"][k]) for k in keys},
                           {k: list(section["float_types"][k]) for k in keys},
                           {k: section["partitions"].get(k) for k in keys},
                           dict(section["census"]))  # fmt: skip
        measured = {k: ({int(t): float(ms) for t, ms in section["ms"][k].items()},
                        float(section["cosine"][k])) for k in keys}  # fmt: skip
        threads = sorted(measured["fp32"][0])
        host = data["host"]
        where = (f"{data['device']} ({host.get('machine')}, {host.get('cpus')} CPUs; timed on "
                 "the device)")  # fmt: skip
        return assemble(found, measured, str(section["model"]), where, threads), data["device"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EdgevtError(f"--profile-on {path}: its op profile is damaged ({exc!r}); "
                          f"{hint}.") from exc


FULL = "full int8"  # the files' key of full int8
GROUP = "group"  # ... of the fewest-partitions group
LATENCY = "latency types"  # ... and of the per-type latency recipe's own file


def partitions(path: Path) -> int | None:
    """XNNPACK partitions LiteRT cuts ``path`` into here (its DELEGATE nodes): between two,
    an op XNNPACK does not take runs in TFLite's single-threaded kernels (CvT-13's int8 RSQRT
    and GELU). None where this LiteRT does not list its nodes."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    try:
        nodes = interpreter._get_ops_details()  # noqa: SLF001  (the execution plan's nodes)
    except AttributeError:
        return None
    return sum(node.get("op_name") == "DELEGATE" for node in nodes)


def fewest_partitions(
    single: dict[str, int | None], full: int | None,
    count: Callable[[tuple[str, ...]], tuple[int | None, Path]],
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[list[str], int, Path] | None:
    """The op types to keep in float together for the fewest XNNPACK partitions: the types
    whose float form alone lowers full int8's count, then, greedily, the type that lowers it
    most, until one partition or no type helps; then each type whose removal keeps the count
    is dropped again (more int8). ``count(types)`` writes such a file and counts it. (float
    types, partitions, file), or None where no group beats full int8 and every single type."""
    if full is None or full <= 1 or any(n is None for n in single.values()):
        return None
    chosen = {t for t, n in single.items() if n < full}
    counted: dict[tuple[str, ...], tuple[int | None, Path]] = {}

    def partitions_of(types: set[str]) -> int:
        key = tuple(sorted(types))
        if key not in counted:
            progress(f"counting XNNPACK partitions with {' '.join(key)} in float")
            counted[key] = count(key)
        return counted[key][0] or full

    now = partitions_of(chosen) if chosen else full
    while now > 1 and len(chosen) < len(single):
        best, op_type = min((partitions_of(chosen | {t}), t) for t in single if t not in chosen)
        if best >= now:
            break
        chosen.add(op_type)
        now = best
    for op_type in sorted(chosen):
        if len(chosen) > 1 and partitions_of(chosen - {op_type}) <= now:
            chosen.discard(op_type)
            now = partitions_of(chosen)
    key = tuple(sorted(chosen))
    for other, (_, path) in counted.items():  # the files not chosen: up to one per type
        if other != key:
            path.unlink(missing_ok=True)
    if len(chosen) < 2 or now >= min(n for n in single.values()):
        if key in counted:
            counted[key][1].unlink(missing_ok=True)
        return None  # a single type's file (already in the profile) does as well
    return list(key), now, counted[key][1]


def _counted_file(
    work: Path, types: tuple[str, ...], quantize_with: Callable[[Path, tuple[str, ...]], Any]
) -> tuple[int | None, Path]:
    path = work / f"int8_group_{len(list(work.glob('int8_group_*')))}.tflite"
    quantize_with(path, types)
    return partitions(path), path


def counted(
    files: dict[str, Path], info: ArtifactInfo, images: np.ndarray, core: str,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, tuple[dict[int, float], float]]:
    """``measure``'s answer with millions of aarch64 instructions per inference on ``core``
    (emulated, 1 thread) for the time; the cosine to fp32 is taken here, because LiteRT's
    int8 kernels compute the same integers on ARM (``edgevt bundle --verify-aarch64``)."""
    from edgevt.aarch64 import count_files

    counts = count_files(files, core, images[:1], progress=progress)
    cosine = cosines(files, info, images)
    return {k: ({1: counts[k] / 1e6}, cosine[k]) for k in files}


def cosines(files: dict[str, Path], info: ArtifactInfo, images: np.ndarray) -> dict[str, float]:
    """Each file's logit cosine to the ``fp32`` file's on ``images``, run here (LiteRT's int8
    kernels compute the same integers on ARM, so this stands for the device's)."""
    from edgevt.targets.tflite import LiteRTRunner
    from edgevt.validate.evaluate import compare_logits

    logits = {}
    for key, path in files.items():
        with LiteRTRunner(path, threads=1, info=info) as runner:
            logits[key] = runner.infer(images)
    return {k: compare_logits(logits["fp32"], v)["cosine"] for k, v in logits.items()}


def time_pair(
    fp32: Path, int8: Path, info: ArtifactInfo, images: np.ndarray, threads: list[int]
) -> tuple[dict[int, float], dict[int, float], float]:
    """fp32 and int8 latency (ms per thread count) measured in one run, and int8's cosine."""
    from edgevt.targets.tflite import LiteRTRunner

    found = measure({"fp32": fp32, "int8": int8},
                    lambda p, t: LiteRTRunner(p, threads=t, info=info),
                    images[:1], images[:CHECK_IMAGES], threads)  # fmt: skip
    return found["fp32"][0], found["int8"][0], found["int8"][1]
