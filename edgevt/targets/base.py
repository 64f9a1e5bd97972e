"""The target contract: what every export target declares and does, and the one runner interface.

A target is one module (or package) under ``edgevt/targets/`` with a ``Target`` subclass that
registers itself with ``@register_target``. It declares its ``TargetSpec`` (name, suffixes,
precisions, the pip extra it needs, GPU/macOS), a frozen ``Options`` class (its own export
options; unknown keys are rejected), says whether its runtime is here (``available``), exports
the precisions asked for (``export``), opens a ``Runner`` for its files, reads the
``ArtifactInfo`` they carry, and names the quantization rules it follows. The CLI's choices,
``edgevt targets``, ``open_runner``, bundles, the report and the docs all read the registry
(``edgevt.targets``), so adding a target touches no other module.

A runner (after Polygraphy's) is created cheaply, ``activate()``-d (load session/interpreter),
asked to ``infer`` batches of preprocessed images (NCHW float32) and returns logits;
``describe()`` says what it is. Use it as a context manager.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import dataclasses
import importlib.util
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgevt.artifact import ArtifactInfo
from edgevt.errors import BackendMissingError, EdgevtError, RuntimeRefusal

if TYPE_CHECKING:  # heavy imports stay out of `edgevt --help`
    from torch import nn

    from edgevt.devices import DeviceProfile
    from edgevt.op_profile import OpProfile
    from edgevt.probes import Probe
    from edgevt.quant.config import QuantConfig
    from edgevt.quant.rules import TargetRules
    from edgevt.quant.simulate import QuantSim
    from edgevt.quant.table import CalibrationTable
    from edgevt.run import RunDir


class Runner(abc.ABC):
    """Load once, infer many times."""

    #: what the artifact says about itself; set by the subclass before or during activate().
    info: ArtifactInfo

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> None:
        if not self.is_active:
            with self._runtime_errors("load"):
                self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, 3, H, W) float32."""
        if not self.is_active:
            self.activate()
        with self._runtime_errors("run"):
            return self._infer(np.ascontiguousarray(batch, dtype=np.float32))

    @contextlib.contextmanager
    def _runtime_errors(self, verb: str) -> Iterator[None]:
        """A runtime's own exception while loading or running a file (a damaged graph or
        flatbuffer, metadata that does not fit the graph) is the file's fault: one EdgevtError
        naming it, not an internal error. What edgevt already names passes through."""
        from edgevt.errors import as_edgevt_error

        try:
            yield
        except Exception as exc:
            if as_edgevt_error(exc) is not None:
                raise
            what = getattr(self, "path", None) or getattr(self.info, "model", "the artifact")
            said = " ".join(str(exc).split())[:300]  # one line, whatever the runtime printed
            raise RuntimeRefusal(
                f"its runtime could not {verb} {what} ({type(exc).__name__}: {said}) — the file "
                "or its edgevt metadata is damaged, or it was not exported by edgevt; export it "
                "again."
            ) from exc

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend, artifact, precision, threads: what a report needs to say what ran."""

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    def _deactivate(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()


@dataclass(frozen=True, kw_only=True)
class TargetSpec:
    """What a target is, for the CLI, ``edgevt targets``, bundles and the docs."""

    name: str
    description: str
    suffixes: tuple[str, ...]  # the first is what export writes (``model_int8.onnx``)
    precisions: tuple[str, ...]  # the first is fp32: every other is checked against it
    extra: str | None = None  # pip extra that installs its runtime; None = core dependency
    needs_gpu: bool = False
    needs_macos: bool = False
    int8_precision: str = "int8"  # what --int8 means here (Core ML calls it w8a8)
    device_runtime: str = ""  # what a device bundle needs to run its files

    @property
    def suffix(self) -> str:
        return self.suffixes[0]


@dataclass(frozen=True)
class TargetOptions:
    """A target's own export options: a frozen dataclass whose fields are the option names.

    ``from_dict`` builds one from a config section or CLI flags, rejecting unknown keys and
    values of the wrong type; ``None`` values mean "the default" and are dropped.
    """

    @classmethod
    def from_dict(cls, data: dict[str, Any], target: str) -> TargetOptions:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        given = {k: v for k, v in data.items() if v is not None}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            offered = ", ".join(_flag(f) for f in fields) or "none"
            raise EdgevtError(
                f"{', '.join(_flag(k) for k in unknown)} does not apply to --target {target} "
                f"(its options: {offered})."
            )
        hints = typing.get_type_hints(cls)
        values = {k: _coerce(_flag(k), v, hints[k]) for k, v in given.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the option's declared type (``int``, ``bool``, ``tuple[str, ...]``...)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise EdgevtError(f"{name} takes a list, not {value!r}.")
        return tuple(_coerce(name, v, typing.get_args(hint)[0]) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        kind = _KINDS.get(hint.__name__, hint.__name__)
        raise EdgevtError(f"{name} takes {kind}, not {value!r}.")
    return value


_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


@dataclass
class Quantization:
    """What an int8 artifact quantized, and what it could not honour of the table/config."""

    quantized_ops: int
    float_ops: list[str] = field(default_factory=list)
    not_honoured: list[str] = field(default_factory=list)
    summary: str = ""  # one line for the export's output, e.g. "full int8, 96 ranges honoured"


@dataclass
class Artifact:
    """One exported file (or package) and what the target says about it."""

    path: Path
    precision: str
    quantization: Quantization | None = None
    files: dict[str, Path] = field(default_factory=dict)  # companions (calib cache, scripts)
    notes: list[str] = field(default_factory=list)  # lines the export prints
    details: dict[str, Any] = field(default_factory=dict)  # the target's own report
    check: dict[str, Any] = field(default_factory=dict)  # vs the fused model, set by the API

    def record(self, target: str) -> dict[str, Any]:
        """The typed record the manifest keeps (what the report reads)."""
        return {
            "file": self.path.name,
            "target": target,
            "precision": self.precision,
            "check": self.check,
            "quantization": None if self.quantization is None else vars(self.quantization),
            "files": {k: p.name for k, p in self.files.items()},
            "notes": self.notes,
            "details": self.details,
        }


@dataclass
class ExportContext:
    """Everything a target's ``export`` gets from the API: the fused model, its info, the run
    directory, the precisions asked for, the calibration (once, shared) and check images."""

    model: nn.Module  # fused, eval mode
    info: ArtifactInfo  # fp32, this target's name set
    run: RunDir
    precisions: list[str]
    images: Any  # torch.Tensor (N, 3, H, W): the check images
    table: CalibrationTable | None = None
    config: QuantConfig | None = None  # None: the target's default
    calib: Path | None = None  # the calibration images (some targets range more tensors)
    calib_size: int = 512
    max_drop: float | None = None
    progress: bool = True

    def path(self, spec: TargetSpec, precision: str) -> Path:
        return self.run / artifact_name(spec, precision)

    def info_for(self, precision: str, **extra: Any) -> ArtifactInfo:
        return dataclasses.replace(
            self.info, precision=precision, extra={**self.info.extra, **extra}
        )

    def stage(self, what: str) -> contextlib.AbstractContextManager[None]:
        """One line before and after a step that has no progress bar of its own."""
        from edgevt.progress import step

        return step(what, self.progress)


def artifact_name(spec: TargetSpec, precision: str) -> str:
    """``model.onnx``, ``model_int8.onnx``, ``model_fp16.tflite``: one name scheme for all."""
    return f"model{spec.suffix}" if precision == "fp32" else f"model_{precision}{spec.suffix}"


def require_info(info: ArtifactInfo | None, path: Path) -> ArtifactInfo:
    """The info a file carries, or the one error every runner and reader gives without it."""
    if info is None:
        raise EdgevtError(
            f"{path} carries no edgevt metadata (model, preprocessing, classes, precision); "
            "re-export it with `edgevt export`."
        )
    return info


def missing_modules(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


class Target(abc.ABC):
    """One export target. Subclass, set ``spec`` (and ``Options``), decorate with
    ``@register_target``."""

    spec: ClassVar[TargetSpec]
    Options: ClassVar[type[TargetOptions]] = TargetOptions
    #: Python modules its runtime needs; ``available`` names the extra when one is missing.
    requires: ClassVar[tuple[str, ...]] = ()
    #: options with a CLI flag: (option, argparse kwargs); the CLI adds them as a group.
    cli_options: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = ()
    #: whether ``--max-drop`` (the accuracy-budgeted float-op search) runs for this target.
    supports_max_drop: ClassVar[bool] = False
    #: whether ``edgevt debug`` reads this target's int8 files (``debug_probe``).
    supports_debug: ClassVar[bool] = False
    #: distributions whose versions the manifest records for its files.
    version_packages: ClassVar[tuple[str, ...]] = ()

    def available(self) -> str | None:
        """None when this target can export and run here, else the one-line reason
        ("install X", "needs a GPU")."""
        missing = missing_modules(*self.requires)
        if missing:
            return f"needs {', '.join(missing)}: pip install 'edgevt[{self.spec.extra}]'"
        return None

    def require(self) -> None:
        """Raise the one-line ``available()`` message when the runtime is missing."""
        why = self.available()
        if why is not None:
            raise BackendMissingError(f"the {self.spec.name} target {why}.")

    def resolve_precisions(self, precisions: list[str] | None, int8: bool) -> list[str]:
        """fp32 first (every target exports it: it is what the others are checked against)."""
        wanted = ["fp32", *(precisions or []), *(["int8"] if int8 else [])]
        wanted = [self.spec.int8_precision if p == "int8" else p for p in wanted]
        unknown = [p for p in wanted if p not in self.spec.precisions]
        if unknown:
            raise EdgevtError(
                f"target {self.spec.name} does not offer {', '.join(unknown)}; it offers "
                f"{', '.join(self.spec.precisions)}.{self.precision_hint(unknown)}"
            )
        return list(dict.fromkeys(wanted))

    def precision_hint(self, unknown: list[str]) -> str:
        """More to say when a precision is not offered (a subclass's hook)."""
        return ""

    def options(self, data: dict[str, Any] | TargetOptions | None = None) -> TargetOptions:
        if isinstance(data, TargetOptions):
            return data
        return self.Options.from_dict(dict(data or {}), self.spec.name)

    def validate(self, options: TargetOptions, precisions: list[str], max_drop: float | None):
        """Refuse a request this target cannot honour, before any work is done."""
        if max_drop is not None and not self.supports_max_drop:
            raise EdgevtError(
                f"--max-drop is not yet honoured by the {self.spec.name} target; choose the float "
                "ops with --quant-config, or export with a target that runs the accuracy-budgeted "
                "search (`edgevt targets --json`: max_drop)."
            )

    def quantization_rules(self) -> TargetRules | None:
        """The int8 rules this target quantizes by (what QAT and ``--max-drop`` simulate)."""
        return None

    def simulation(
        self, model: nn.Module, fp32_onnx: Any, table: CalibrationTable,
        config: QuantConfig | None, artifact: Path | None = None,
    ) -> QuantSim:  # fmt: skip
        """edgevt's simulation of this target's int8 numerics for the fused ``model`` (what
        ``edgevt debug`` holds an int8 ``artifact`` to; ``config`` None: the target's
        default): by default the QDQ graph of ``quantization_rules()``. A target whose file
        format adds constraints of its own (scales TFLite fixes or shares) overrides it."""
        from edgevt.quant.config import QuantConfig
        from edgevt.quant.simulate import QuantSim

        return QuantSim.for_export(model, fp32_onnx, table, config or QuantConfig(),
                                   self.quantization_rules())  # fmt: skip

    def int8_variant(
        self, run: Path, out: Path, table: CalibrationTable, config: QuantConfig,
        info: ArtifactInfo,
    ) -> Path:  # fmt: skip
        """Write, from the fp32 file in ``run``, the int8 file ``edgevt export --quant-config``
        would write with ``config`` (what ``edgevt debug --max-drop`` measures candidates on).
        Targets that set ``supports_debug`` override it."""
        raise EdgevtError(f"edgevt debug cannot write {self.spec.name} int8 variants yet.")

    def op_profile(
        self, run: Path, threads: list[int] | None = None, progress: bool = True,
        core: str | None = None,
    ) -> OpProfile:
        """Measure what each op type of this run's int8 file costs in int8 on this host, or in
        aarch64 instructions on an emulated ARM ``core`` (``edgevt profile``; see
        ``edgevt.op_profile``)."""
        raise EdgevtError(
            f"edgevt profile does not measure {self.spec.name} files yet (tflite does)."
        )

    def debug_probe(
        self, path: Path, table: CalibrationTable, modules: list[str], details: dict[str, Any],
        threads: int | None = None,
    ) -> Probe:  # fmt: skip
        """A probe that reads the intermediate tensors of one of this target's int8 files
        (``edgevt debug``; see ``edgevt.probes``); ``modules`` are the fused model's module
        names, ``details`` what the export recorded about the file (``Artifact.details``).
        Targets that set ``supports_debug`` override it."""
        raise EdgevtError(f"edgevt debug cannot read {self.spec.name} files yet.")

    @abc.abstractmethod
    def export(self, ctx: ExportContext, options: TargetOptions) -> list[Artifact]:
        """Write one artifact per precision of ``ctx.precisions`` (fp32 first) into ``ctx.run``."""

    @abc.abstractmethod
    def runner(self, path: Path, threads: int | None = None) -> Runner:
        """A runner for one of this target's files."""

    @abc.abstractmethod
    def read_info(self, path: Path) -> ArtifactInfo | None:
        """The ArtifactInfo embedded in the file, None if it carries none."""

    def check(self, artifact: Artifact, images: np.ndarray, reference: np.ndarray) -> dict:
        """How the artifact compares with the fused model's logits on the check images."""
        from edgevt.validate.evaluate import compare_logits

        with self.runner(artifact.path) as runner:
            return compare_logits(reference, runner.infer(images))

    def versions(self) -> dict[str, str]:
        """The library versions that wrote its files (recorded in the manifest)."""
        from importlib import metadata

        out = {}
        for dist in self.version_packages:
            with contextlib.suppress(metadata.PackageNotFoundError):
                out[dist] = metadata.version(dist)
        return out

    def bundle_files(
        self, folder: Path, models: dict[str, ArtifactInfo], input_size: int
    ) -> list[str]:
        """Extra files a device bundle of this target needs (a build script); their names."""
        return []

    def device_builds(self, models: dict[str, ArtifactInfo]) -> dict[str, dict[str, str]]:
        """Files the device builds from the bundled ones before it runs them (a Jetson's
        TensorRT engines): ``{built name: {"from": bundled name, "precision": ...,
        "build": how}}``, listed in bundle.json so that ``run_bundle.py`` checks, scores and
        times each against its source's host results once it exists."""
        return {}

    def runs_on(self, info: ArtifactInfo, device: DeviceProfile) -> bool:
        """Whether ``device`` can run this target's file described by ``info`` (a bundle leaves
        out the files it cannot: an ExecuTorch program lowered to Core ML on a Pi)."""
        return True

    def report_note(self, precision: str) -> str:
        """A sentence the report adds under its latency table when it shows this target's
        ``precision`` files (e.g. that the host timed a stand-in runtime)."""
        return ""

    def bundle_readme(self) -> str:
        """A section the bundle README adds for this target's devices."""
        return ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """This target's own export flags, as one argument group (defaults None)."""
        if not cls.cli_options:
            return
        group = parser.add_argument_group(f"--target {cls.spec.name}")
        for name, kwargs in cls.cli_options:
            if any(a.dest == name for a in parser._actions):
                continue  # a flag two targets share (--opset) is added once
            group.add_argument(_flag(name), dest=name, default=None, **kwargs)
