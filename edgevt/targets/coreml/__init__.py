"""The ``coreml`` target: ML Program packages (fp32, fp16, W8, W8A8 from the CalibrationTable).

``convert`` converts and quantizes, ``census`` checks what a package computes in which
precision, ``runner`` runs it (Apple's runtime on macOS, ``mil_interpreter`` elsewhere).
This module only declares the target; the heavy parts are imported when used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevt.artifact import ArtifactInfo
from edgevt.quant.rules import TargetRules
from edgevt.targets import register_target
from edgevt.targets.base import (
    Artifact,
    ExportContext,
    Quantization,
    Runner,
    Target,
    TargetOptions,
    TargetSpec,
)

# Core ML's int8 rules in the terms the simulations use: symmetric int8 activations (zero
# point 0, scale amax/127), 8-bit symmetric per-channel weights, float biases, op inputs only.
COREML_RULES = TargetRules(name="coreml", signed_activations=True)


@dataclass(frozen=True)
class CoremlOptions(TargetOptions):
    deployment_target: str | None = None


@register_target
class CoremlTarget(Target):
    spec = TargetSpec(
        name="coreml",
        description="Core ML ML Program (Apple); on Linux validated and run by edgevt's MIL "
        "interpreter",
        suffixes=(".mlpackage",),
        precisions=("fp32", "fp16", "w8", "w8a8"),
        extra="coreml",
        int8_precision="w8a8",
        device_runtime="coremltools (macOS)",
    )
    Options = CoremlOptions
    requires = ("coremltools",)
    supports_debug = True
    supports_max_drop = True  # the float ops chosen in QuantSim with Core ML's rules
    version_packages = ("coremltools",)
    cli_options = (
        ("deployment_target", {"metavar": "OS",
                               "help": "Core ML minimum deployment target, e.g. iOS17 (default: "
                               "the oldest that holds each precision: iOS15 fp32/fp16, iOS16 "
                               "w8, iOS17 w8a8)"}),
    )  # fmt: skip

    def quantization_rules(self) -> TargetRules:
        return COREML_RULES

    def debug_probe(self, path: Path, table, modules, details, threads: int | None = None):
        self.require()
        from edgevt.targets.coreml.debug import CoremlProbe

        return CoremlProbe(path, table, details, threads)

    def validate(self, options: CoremlOptions, precisions, max_drop) -> None:
        super().validate(options, precisions, max_drop)
        from edgevt.targets.coreml.convert import deployment_target

        for precision in precisions:  # a too-old deployment target fails before any work
            deployment_target(options.deployment_target, precision)

    def export(self, ctx: ExportContext, options: CoremlOptions) -> list[Artifact]:
        """One package per precision, each checked structurally by its op census."""
        from edgevt.io import write_json
        from edgevt.quant.config import QuantConfig
        from edgevt.targets.coreml.convert import export_coreml

        config = ctx.config or QuantConfig()
        budget: dict = {}
        if ctx.max_drop is not None and "w8a8" in ctx.precisions:
            from edgevt.quant.sensitivity import budget_config

            config, budget = budget_config(ctx, COREML_RULES)
        artifacts = []
        for precision in ctx.precisions:
            path = ctx.path(self.spec, precision)
            with ctx.stage(f"converting {ctx.info.model} to Core ML {precision}"):
                done = export_coreml(
                    ctx.model, ctx.info, path, precision=precision,
                    table=ctx.table if precision == "w8a8" else None, example=ctx.images[:1],
                    minimum_deployment_target=options.deployment_target, config=config,
                )  # fmt: skip
            details = done.to_dict()  # activation_keys: what `edgevt debug` reads back
            quant = None
            if precision == "w8a8":
                quant = Quantization(
                    details["census"]["int8_ops"], done.kept_float,
                    done.unexpected_float + done.notes,
                    f"{details['census']['int8_ops']} ops int8"
                    + (f", {len(done.kept_float)} kept in float" if done.kept_float else ""),
                )  # fmt: skip
                if budget:
                    from edgevt.quant.sensitivity import budget_summary

                    quant.summary += budget_summary(budget)
                    details["sensitivity"] = budget
            artifacts.append(Artifact(path, precision, quant, details=details))
        if "w8a8" in ctx.precisions:
            int8_file = next(a for a in artifacts if a.precision == "w8a8")
            int8_file.files["config"] = write_json(ctx.run / "quant_config.json", config.to_dict())
            if budget:
                int8_file.files["sensitivity"] = ctx.run / "sensitivity.json"
        return artifacts

    def check(self, artifact: Artifact, images: np.ndarray, reference: np.ndarray) -> dict:
        from edgevt.validate.evaluate import compare_logits

        with self.runner(artifact.path) as runner:
            check = compare_logits(reference, runner.infer(images))
            check["runtime"] = runner.describe()["backend"]
        return check

    def runner(self, path: Path, threads: int | None = None) -> Runner:
        from edgevt.targets.coreml.runner import CoreMLRunner

        return CoreMLRunner(path, threads=threads)

    def read_info(self, path: Path) -> ArtifactInfo | None:
        from edgevt.targets.coreml.runner import read_coreml_info

        return read_coreml_info(path)
