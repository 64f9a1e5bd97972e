"""The CalibrationTable: measured ranges, keyed by stable names, that every target honours.

Activation keys name where a tensor meets a quantizable op in the fused PyTorch model:
``<module>:in0`` / ``<module>:out`` for a Conv2d or Linear module, and
``<module>@matmul<i>:in0`` / ``:in1`` for the i-th matmul/einsum a module's own forward calls
(attention products). Weight entries give the per-output-channel max |w|. The file is JSON:
readable, diffable, hand-editable; ``edgevt calibrate --method`` can re-derive ranges later
because the observed min/max travel with the clipped range.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevt.errors import EdgevtError, path_problem
from edgevt.io import write_json

FORMAT = "edgevt.calibration/1"


@dataclass
class TensorRange:
    min: float
    max: float
    observed_min: float | None = None
    observed_max: float | None = None

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max))

    def to_dict(self) -> dict[str, float]:
        d = {"min": self.min, "max": self.max}
        if self.observed_min is not None:
            d["observed_min"] = self.observed_min
            d["observed_max"] = self.observed_max
        return d


@dataclass
class CalibrationTable:
    model: str
    weights: str
    method: str
    activations: dict[str, TensorRange]
    weight_amax: dict[str, list[float]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # data, checkpoint hash, versions...

    # What code relies on, typed (the file keeps them in ``source``, with the provenance).
    @property
    def ops(self) -> dict[str, str]:
        """The calibrated quantizable ops: op name -> ``Conv2d`` / ``Linear`` / ``matmul``."""
        return dict(self.source.get("ops", {}))

    @property
    def data(self) -> Path | None:
        """The folder of images it was calibrated on (None if not recorded)."""
        return Path(self.source["data"]) if self.source.get("data") else None

    @property
    def images(self) -> int | None:
        return self.source.get("images")

    @property
    def seconds(self) -> float | None:
        return self.source.get("seconds")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "weights": self.weights,
            "method": self.method,
            "source": self.source,
            "activations": {k: r.to_dict() for k, r in self.activations.items()},
            "weight_amax": self.weight_amax,
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "table") -> CalibrationTable:
        if not isinstance(data, dict):
            raise EdgevtError(
                f"{origin} is not an edgevt calibration table (a JSON {type(data).__name__}, "
                "not an object); write one with `edgevt calibrate`."
            )
        if data.get("format") != FORMAT:
            raise EdgevtError(
                f"{origin} is not an edgevt calibration table (format {data.get('format')!r}, "
                f"expected {FORMAT!r}); write one with `edgevt calibrate`."
            )
        acts = {}
        source = data.get("source", {})
        if not isinstance(source, dict) or not isinstance(source.get("ops", {}), dict) or not all(
            isinstance(k, str) and v in ("Conv2d", "Linear", "matmul")
            for k, v in source.get("ops", {}).items()
        ):
            raise EdgevtError(
                f"{origin} is a damaged calibration table: source must be an object whose ops "
                "map op names to Conv2d / Linear / matmul; calibrate again."
            )
        for section in ("activations", "weight_amax"):
            if not isinstance(data.get(section), dict):
                raise EdgevtError(
                    f"{origin} is a damaged calibration table: {section} must be an object "
                    f"of op -> values, not {type(data.get(section)).__name__}; calibrate again."
                )
        for key, value in data["activations"].items():
            try:
                if not all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))
                           for x in value.values()):  # fmt: skip
                    raise ValueError("its values must be numbers")
                acts[key] = TensorRange(
                    **{f: None if x is None else float(x) for f, x in value.items()}
                )
                if acts[key].min is None or acts[key].max is None:
                    raise ValueError("min and max must be numbers")
            except (TypeError, ValueError, AttributeError) as exc:
                raise EdgevtError(
                    f"{origin}: the range of {key} is damaged ({exc}); calibrate again or fix "
                    "that entry."
                ) from exc
        try:
            table = cls(
                model=data["model"],
                weights=data.get("weights", ""),
                method=data["method"],
                activations=acts,
                weight_amax={k: [float(x) for x in v] for k, v in data["weight_amax"].items()},
                source=data.get("source", {}),
            )
        except KeyError as exc:
            raise EdgevtError(
                f"{origin} is a damaged calibration table: it lacks {exc}; calibrate again "
                "(`edgevt calibrate`)."
            ) from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise EdgevtError(
                f"{origin} is a damaged calibration table ({exc}): weight_amax must map ops to "
                "lists of numbers; calibrate again (`edgevt calibrate`)."
            ) from exc
        table.validate(origin)
        return table

    def validate(self, origin: str = "table") -> None:
        """Refuse ranges no target can turn into a working int8 model (they used to export a
        model with NaN logits, or one unrelated to fp32, and exit 0)."""
        for key, r in self.activations.items():
            if not (math.isfinite(r.min) and math.isfinite(r.max)):
                raise EdgevtError(
                    f"{origin}: the range of {key} is not finite ({r.min}, {r.max}); "
                    "calibrate again or fix that entry."
                )
            if r.min > r.max:
                raise EdgevtError(
                    f"{origin}: the range of {key} is inverted (min {r.min} > max {r.max}); "
                    "calibrate again or fix that entry."
                )
            observed = (r.observed_min, r.observed_max)
            seen = max(abs(x) for x in observed) if None not in observed else None
            if seen and r.amax > 10 * seen and all(map(math.isfinite, observed)):
                raise EdgevtError(
                    f"{origin}: the range of {key} ({r.min:.4g}, {r.max:.4g}) is far wider than "
                    f"what calibration observed (at most {seen:.4g}): an edited or damaged entry; "
                    "calibrate again or fix it."
                )
            if r.min == r.max and None not in observed and observed[0] < observed[1]:
                raise EdgevtError(
                    f"{origin}: the range of {key} is zero-width ({r.min}) although calibration "
                    f"observed [{observed[0]:.4g}, {observed[1]:.4g}]: an edited or damaged "
                    "entry; calibrate again or fix it."
                )
        if self.activations and all(r.min == r.max == 0 for r in self.activations.values()):
            raise EdgevtError(
                f"{origin}: every activation range is zero: the table was measured on blank "
                "inputs or edited by hand; calibrate again on real images."
            )
        for key, amax in self.weight_amax.items():
            if any(not math.isfinite(a) or a < 0 for a in amax):
                raise EdgevtError(
                    f"{origin}: weight amax of {key} holds a negative or non-finite value; "
                    "calibrate again or fix that entry."
                )

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        path = Path(path)
        if not path.is_file():
            raise EdgevtError(
                path_problem(path, "calibration table")
                + "; pass the .json `edgevt calibrate -o` wrote."
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgevtError(f"{path} is not JSON ({exc}); is it a calibration table?") from exc
        return cls.from_dict(data, str(path))

    def check_weights(self, model: Any) -> None:
        """Refuse weight amax lists that do not describe this model's weights: a length that is
        not the layer's output channels, or values over 10x away from the weights' own max |w|
        (a table from another version or checkpoint of the model, or edited)."""
        weights = _weights(model)
        for name, amax in self.weight_amax.items():
            if name not in weights:
                continue
            w = weights[name]
            channels = w.shape[0]
            if len(amax) not in (1, channels):
                raise EdgevtError(
                    f"the calibration table's weight amax of {name} has {len(amax)} values for "
                    f"{channels} output channels: it is from another model version or "
                    "edited; calibrate again."
                )
            actual = w.detach().abs().reshape(channels, -1).amax(dim=1).tolist()
            if len(amax) == 1:
                actual = [max(actual)]
            for i, (a, real) in enumerate(zip(amax, actual, strict=True)):
                # the file rounds amax to 8 decimals: tiny channels round to 0
                if not (real / 10 - 1e-6 <= a <= real * 10 + 1e-6):
                    raise EdgevtError(
                        f"the calibration table's weight amax of {name} (channel {i}: {a:.4g}) "
                        f"is far from the weights' own max |w| ({real:.4g}): the table is from "
                        "another checkpoint or edited; calibrate again with these weights."
                    )

    def check_for(self, model: str, known_keys: set[str] | None = None) -> None:
        """Refuse a table made for another model (or a model whose structure changed)."""
        if self.model != model:
            raise EdgevtError(
                f"the calibration table was made for {self.model!r}, not {model!r}; calibrate "
                f"this model: edgevt calibrate {model} --data DIR -o calib/{model}.json"
            )
        if known_keys is not None:
            missing = sorted(known_keys - set(self.activations))
            if missing:
                raise EdgevtError(
                    f"the calibration table lacks {len(missing)} tensors this model quantizes "
                    f"(first: {missing[0]}); it is from another version of the model: "
                    "calibrate again."
                )


def _weights(model: Any) -> dict[str, Any]:
    return {n: m.weight for n, m in model.named_modules()
            if getattr(m, "weight", None) is not None and m.weight.ndim}  # fmt: skip


def diff_tables(a: CalibrationTable, b: CalibrationTable) -> list[tuple[str, float, float]]:
    """(key, relative change of amax, amax in b) for activations whose range differs."""
    out = []
    for key in sorted(set(a.activations) | set(b.activations)):
        ra, rb = a.activations.get(key), b.activations.get(key)
        if ra is None or rb is None:
            out.append((key, float("inf"), rb.amax if rb else float("nan")))
        elif (ra.min, ra.max) != (rb.min, rb.max):
            out.append((key, (rb.amax - ra.amax) / max(ra.amax, 1e-12), rb.amax))
    return out
