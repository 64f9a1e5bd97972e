"""Quantization config: which ops run in int8, as layered data.

Precedence: global < op type < module name (regex, later rules win); ``None`` at any level
means "keep this op in float". Quantizable ops are the Conv2d and Linear modules of the fused
model and the matmul/einsum products a module computes itself (``matmul``: attention's
q·kᵀ and softmax·v). Everything else (LayerNorm, Softmax, GELU/Hardswish, residual and
attention-bias adds) stays in float: those ops are cheap, their inputs have the widest
ranges in a vision transformer, and int8 versions of them are where published ViT PTQ loses
accuracy (FQ-ViT, PTQ4ViT). Defaults chosen for these models:

* Conv2d and Linear: int8 per-output-channel symmetric weights, per-tensor activations.
  That includes the first conv (its input is an 8-bit image anyway) and the classifier
  (its output, the logits, stays float). ``{"weights": "per_tensor"}`` at any level gives
  one scale per weight tensor (what some NPUs require); the granularity is per op, so a
  config may keep, say, the depthwise convs per channel (``{"module_name": {".*conv_dw":
  {}}}`` after a per-tensor ``global``), and every exporter honours it.
* add: residual adds whose inputs and output were all calibrated (CNN blocks: conv outputs
  and conv inputs) run in int8 on ONNX Runtime, which keeps a whole MBConv block in int8
  (EfficientNet-Lite0 on imagenet-val1000, benchmarks/int8_ptq.py: 1.1-1.24x faster than
  fp32 instead of ~1.0x, top-1 -0.40 pt, with 7-bit weights on ORT; see onnx_qdq.py).
  Transformer residual streams are never calibrated tensors, so their adds stay in float.
  ``{"op_type": {"add": null}}`` turns it off.
* matmul (activation x activation): float. In LeViT and CvT they are small (196 tokens,
  head dim 16-64), ONNX Runtime's int8 kernels for them are slower than fp32 here, and the
  softmax output is the tensor ViT PTQ papers find hardest. Turn on with
  ``{"op_type": {"matmul": {}}}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgevt.errors import EdgevtError, path_problem

OP_TYPES = ("Conv2d", "Linear", "matmul", "add")
GRANULARITIES = ("per_channel", "per_tensor")


@dataclass(frozen=True)
class OpQuant:
    """How one op is quantized. ``weights`` applies to Conv2d/Linear only."""

    weights: str = "per_channel"

    def __post_init__(self) -> None:
        if self.weights not in GRANULARITIES:
            raise EdgevtError(f"weights must be one of {GRANULARITIES}, not {self.weights!r}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str) -> OpQuant | None:
        if data is None:
            return None
        if not isinstance(data, dict):
            raise EdgevtError(f"{where}: expected a table of settings or null, got {data!r}.")
        unknown = set(data) - {"weights"}
        if unknown:
            raise EdgevtError(f"{where}: unknown setting(s) {sorted(unknown)}; known: weights.")
        return cls(**data)


_DEFAULT = OpQuant()


@dataclass
class QuantConfig:
    global_config: OpQuant | None = _DEFAULT
    op_type: dict[str, OpQuant | None] = field(default_factory=lambda: {"matmul": None})
    module_name: dict[str, OpQuant | None] = field(default_factory=dict)

    def resolve(self, name: str, op_type: str) -> OpQuant | None:
        """The settings for op ``name`` of ``op_type``, or None to keep it in float."""
        chosen = self.global_config
        if op_type in self.op_type:
            chosen = self.op_type[op_type]
        for pattern, setting in self.module_name.items():
            if re.fullmatch(pattern, name):
                chosen = setting
        return chosen

    def keep_float(self, names: list[str]) -> QuantConfig:
        """A copy with ``names`` (exact op names) kept in float: mixed precision as config."""
        extra = {re.escape(n): None for n in names}
        return QuantConfig(self.global_config, dict(self.op_type), {**self.module_name, **extra})

    def to_dict(self) -> dict[str, Any]:
        def dump(x: OpQuant | None) -> dict[str, Any] | None:
            return None if x is None else asdict(x)

        return {
            "global": dump(self.global_config),
            "op_type": {k: dump(v) for k, v in self.op_type.items()},
            "module_name": {k: dump(v) for k, v in self.module_name.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> QuantConfig:
        if not isinstance(data, dict):
            raise EdgevtError(
                f"{origin}: a quantization config is a JSON object (global / op_type / "
                f"module_name), not a {type(data).__name__}."
            )
        unknown = set(data) - {"global", "op_type", "module_name"}
        if unknown:
            raise EdgevtError(
                f"{origin}: unknown key(s) {sorted(unknown)}; known: global, op_type, module_name."
            )
        for section in ("op_type", "module_name"):
            if not isinstance(data.get(section, {}), dict):
                raise EdgevtError(
                    f"{origin}: {section} must be an object of name -> settings (or null for "
                    f"float), not a {type(data[section]).__name__}."
                )
        config = cls()
        if "global" in data:
            config.global_config = OpQuant.from_dict(data["global"], f"{origin}: global")
        for op, setting in data.get("op_type", {}).items():
            if op not in OP_TYPES:
                raise EdgevtError(f"{origin}: unknown op type {op!r}; known: {OP_TYPES}.")
            config.op_type[op] = OpQuant.from_dict(setting, f"{origin}: op_type.{op}")
        for pattern, setting in data.get("module_name", {}).items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise EdgevtError(f"{origin}: bad module_name regex {pattern!r}: {exc}") from exc
            config.module_name[pattern] = OpQuant.from_dict(
                setting, f"{origin}: module_name.{pattern}"
            )
        return config

    @classmethod
    def load(cls, path: str | Path) -> QuantConfig:
        path = Path(path)
        if not path.is_file():
            raise EdgevtError(path_problem(path, "quantization config") + "; pass a .json file.")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgevtError(f"{path} is not JSON ({exc}); is it a quant config?") from exc
        return cls.from_dict(data, str(path))
