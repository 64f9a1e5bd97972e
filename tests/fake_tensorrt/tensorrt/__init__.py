"""A stand-in for TensorRT's Python API (see ../README.md): only what run_bundle.py calls."""

from __future__ import annotations

import ctypes
import enum

import numpy as np

__version__ = "10.3.0-fake"
HEADER = b"FAKE-TRT-ENGINE\n"


class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):  # TensorRT 10: no EXPLICIT_BATCH
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class _Tensor:
    def __init__(self, name: str, shape: tuple) -> None:
        self.name, self.shape = name, shape


class _Network:
    onnx: bytes = b""

    def get_input(self, i: int) -> _Tensor:
        import onnx

        graph = onnx.load_from_string(self.onnx).graph
        dims = graph.input[i].type.tensor_type.shape.dim
        return _Tensor(graph.input[i].name, tuple(d.dim_value or -1 for d in dims))


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network, self.num_errors = network, 0

    def parse(self, data: bytes) -> bool:
        self.network.onnx = bytes(data)
        return data[:4] != b"JUNK"

    def get_error(self, i: int) -> str:
        return "not an ONNX model"


class _Profile:
    def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
        assert low[0] >= 1 and len(low) == len(opt) == len(high) == 4


class _Config:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        assert size > 0

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: _Profile) -> int:
        return 0


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
        flags = ",".join(sorted(f.name for f in config.flags))  # for the tests to read back
        return HEADER + flags.encode() + b"\n" + network.onnx


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.addresses, self.shape = engine, {}, None

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name == self.engine.input:
            return self.shape
        return (self.shape[0], *self.engine.output_shape[1:])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        n = int(np.prod(self.shape))
        memory = (ctypes.c_float * n).from_address(self.addresses[self.engine.input])
        x = np.ctypeslib.as_array(memory)
        y = self.engine.session.run(None, {self.engine.input: x.reshape(self.shape).copy()})[0]
        y = np.ascontiguousarray(y, np.float32)
        ctypes.memmove(self.addresses[self.engine.output], y.ctypes.data, y.nbytes)
        return True


class _Engine:
    def __init__(self, data: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.output_shape = tuple(self.session.get_outputs()[0].shape)
        self.num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return (self.input, self.output)[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.input else TensorIOMode.OUTPUT

    def create_execution_context(self) -> _Context:
        return _Context(self)


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        if not data.startswith(HEADER):
            return None
        return _Engine(data[len(HEADER):].split(b"\n", 1)[1])
