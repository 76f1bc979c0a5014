"""How the S2D actor runs its model: fp32, bf16 (autocast) where the hardware runs it natively, or int8 on request.
Pure but for ``quantize`` (torch, imported when called).

``auto`` picks, per device: on a GPU, bf16 for S2D (as the actor always did there) and fp32 for face-api's small
net; on a CPU, bf16 for the full-size S2D when the CPU has native bf16 instructions (``avx512_bf16`` or
``amx_bf16`` among /proc/cpuinfo's flags, read, not guessed), else fp32. The tiny test model and face-api's net
stay fp32 on a CPU: their time is Python dispatch and the landmark branch, which bf16 barely speeds up (measured:
s2d_tiny without its cached landmark branch 29 against 25 ms a clip), while it would move their outputs. The frozen
landmark branch of a video model runs in fp32 on a CPU whatever the precision.

``int8`` (CPU only, opt-in) is dynamic quantisation of an S2D model's Linear layers (``quantize``): int8 weights
(one scale per output channel), activations quantised per batch as they come, torch's own fbgemm kernels. torchao's
equivalent (``Int8DynamicActivationInt8WeightConfig``) was measured slower here in eager mode (1.2x fp32 against
2.0-2.2x), so this uses torch.ao's ``quantize_dynamic``, deprecated but present in every torch the project admits.
One scale per output channel rather than per tensor: relative logit error 2.4% against 4.7% on real clips, for
~8% of the speed. Measured in bench/precision.py and README "Precision".
"""
from __future__ import annotations

from functools import cache

PRECISIONS = ("auto", "fp32", "bf16", "int8")
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # CPU flags of native bf16 matrix instructions, best first
EMULATED = ("no native bf16 on this CPU (avx512_bf16 or amx_bf16): emulated, about 2x slower than fp32 "
            "(measured 0.50x with ViT-B)")
SMALL = ("s2d_tiny", "faceapi-expression")  # configurations that stay fp32 on a CPU under auto


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (the first ``flags`` line of /proc/cpuinfo, or of ``cpuinfo``); empty where there is
    no such file (not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@cache
def native_bf16() -> str | None:
    """This machine's native bf16 CPU flag (``NATIVE_BF16``), or None."""
    flags = cpu_flags()
    return next((f for f in NATIVE_BF16 if f in flags), None)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, config: str, native: str | None = None) -> dict[str, str]:
    """{"cpu": ..., "cuda": ...}: the precision a model of ``config`` runs in on each kind of device, for the
    requested ``precision`` (``native``: the CPU's native bf16 flag; default: this machine's)."""
    check_precision(precision)
    if precision == "int8":  # no int8 path on a GPU (None: cannot run there, ``check_device``)
        if config == "faceapi-expression":
            raise ValueError("--precision int8 quantises an S2D model's Linear layers; face-api's expression net "
                             "runs in fp32 or bf16 (or auto)")
        return {"cpu": "int8", "cuda": None}
    if precision != "auto":
        return {"cpu": precision, "cuda": precision}
    native = native_bf16() if native is None else native
    return {"cpu": "bf16" if native and config not in SMALL else "fp32",
            "cuda": "fp32" if config == "faceapi-expression" else "bf16"}


def check_device(used: dict[str, str | None], device: str) -> None:
    """ValueError (one line) if the model cannot run in its precision on ``device`` ("cpu", "cuda"; "auto": not
    known yet)."""
    if device in used and used[device] is None:
        raise ValueError(f"--precision {used['cpu']} runs on a CPU only: use --device cpu, or --precision "
                         "auto, fp32 or bf16 on a GPU")


def quantize(model):
    """``model`` (an S2D model, fp32, on the CPU) with the Linear layers outside its frozen landmark branch
    dynamically quantised to int8 (one weight scale per output channel), in place. -> the model."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices (see the module docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        names = {n: per_channel_dynamic_qconfig for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.split(".")[0] != "landmark"}
        return quantize_dynamic(model, names, inplace=True)


def describe(used: dict[str, str], native: str | None = None) -> str:
    """One line for the log: "bf16 on CPU (avx512_bf16), bf16 on GPU"; a CPU's bf16 without native instructions
    says it runs emulated, slower than fp32."""
    native = native_bf16() if native is None else native
    cpu = used["cpu"] + (f" ({native})" if used["cpu"] == "bf16" and native else
                         f" ({EMULATED})" if used["cpu"] == "bf16" else "")
    return f"{cpu} on CPU, {used['cuda'] or 'none (CPU only)'} on GPU"
