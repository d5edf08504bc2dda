"""Where and at what precision the model runs: device and precision choice, the autocast context.

One decision serves inference (the encoder's engines) and training (`--precision`): on CUDA bf16
where the GPU supports it, else fp16; on a CPU bf16 only where it has native bf16 matrix units
(AMX or AVX512-BF16), because emulated bf16 is slower than fp32 there; fp32 otherwise.
"""

from __future__ import annotations

import torch

from medhash.errors import InvalidParameterError

__all__ = ["PRECISIONS", "autocast", "cpu_supports_bf16", "default_precision", "resolve_device", "resolve_precision"]

# precision name -> autocast dtype (None: no autocast, plain fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """"auto" -> the GPU when there is one, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix units (AMX or AVX512-BF16)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool((amx and amx()) or (avx and avx()))


def default_precision(device: torch.device) -> str:
    """The fastest precision `device` runs natively: "bf16", "fp16" (CUDA without bf16) or "fp32"."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for a precision name ("auto" or a key of PRECISIONS); None means fp32."""
    if name == "auto":
        name = default_precision(device)
    if name not in PRECISIONS:
        raise InvalidParameterError(f"unknown precision {name!r}; use auto, fp32, bf16 or fp16")
    if PRECISIONS[name] is torch.float16 and device.type != "cuda":
        raise InvalidParameterError("fp16 autocast needs CUDA; use bf16 on the CPU")
    return PRECISIONS[name]


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to `dtype` on `device`; dtype None runs in fp32, even inside a caller's autocast region."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)
