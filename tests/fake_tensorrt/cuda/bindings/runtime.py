"""A stand-in for cuda-python's runtime bindings (see ../../README.md): "device" memory is
host memory, so cudaMemcpy is a memmove either way."""

from __future__ import annotations

import ctypes
import enum

_KEEP: dict[int, ctypes.Array] = {}


class cudaError_t(enum.IntEnum):  # noqa: N801  (cuda-python's names)
    cudaSuccess = 0


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def cudaMalloc(size: int) -> tuple[cudaError_t, int]:  # noqa: N802
    buffer = (ctypes.c_char * size)()
    _KEEP[ctypes.addressof(buffer)] = buffer
    return cudaError_t.cudaSuccess, ctypes.addressof(buffer)


def cudaMemcpy(dst: int, src: int, size: int, kind: cudaMemcpyKind) -> tuple[cudaError_t]:  # noqa: N802
    ctypes.memmove(dst, src, size)
    return (cudaError_t.cudaSuccess,)


def cudaFree(ptr: int) -> tuple[cudaError_t]:  # noqa: N802
    _KEEP.pop(ptr, None)
    return (cudaError_t.cudaSuccess,)
