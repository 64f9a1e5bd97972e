"""How a target quantizes: the rules every int8 writer and every simulation (QAT,
``--max-drop``, ``edgevt debug``) follows for it.

Each target declares its own ``TargetRules`` (``Target.quantization_rules()``); the quantizers
and simulations read only these fields, never a target's name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TargetRules:
    name: str  # the target's name, for messages and records
    signed_activations: bool  # int8 symmetric (True) or uint8 asymmetric (False)
    weight_reduce_range: bool = False  # 7-bit weights
    quantize_outputs: tuple[str, ...] = ()  # node types whose output also gets Q/DQ
    quantize_bias: bool = False
    # Element-wise nodes quantized when every tensor they touch has a calibrated range; lets
    # ONNX Runtime keep whole CNN blocks in int8 (QLinearConv + QLinearAdd, Clip folded into Q)
    # instead of converting layouts around each float Add.
    calibrated_elementwise: tuple[str, ...] = ()
    # ONNX Runtime runs a QDQ Conv in int8 (QLinearConv) only when its output is quantized
    # too; otherwise it dequantizes the weights on every run and convolves in float, which
    # costs time and adds rounding error for nothing. Such convs are kept in float.
    int8_conv_needs_quantized_output: bool = False

    def weight_qmax(self, depthwise: bool = False) -> int:
        """Largest int8 weight magnitude (ORT's 7-bit range spares depthwise convs)."""
        return 64 if self.weight_reduce_range and not depthwise else 127
