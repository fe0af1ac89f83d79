"""Which benchmark runtimes this machine can run, and if not, exactly why.

Detection is split from the decision: `probe()` reads the machine once into a `Probe`, and
`runtime_availability(name, probe)` is a pure function of it, so every branch is testable
without the hardware.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import platform
from dataclasses import asdict, dataclass, field

import torch

RUNTIMES = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "onnxruntime-genai",
            "onnxruntime-genai-cuda", "torch", "torch-sparse24")
SPARSE24_MIN_CAPABILITY = (8, 0)
NO_ONNXRUNTIME = "onnxruntime is not installed (pip install 'wanda-export[onnx]')"
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"
NO_GENAI = "onnxruntime-genai is not installed (pip install 'wanda-export[genai]')"
NO_GENAI_CUDA = ("onnxruntime-genai is built without CUDA (pip install onnxruntime-genai-cuda "
                 "in place of onnxruntime-genai)")
GENAI_DEVICES = {"onnxruntime-genai": "cpu", "onnxruntime-genai-cuda": "cuda"}
# The onnxruntime-genai wheels: the CPU one, and the CUDA one that installs the same module.
_GENAI_DISTRIBUTIONS = {"onnxruntime-genai": False, "onnxruntime-genai-cuda": True}
_EXECUTION_PROVIDERS = {"onnxruntime-cpu": "CPUExecutionProvider",
                        "onnxruntime-cuda": "CUDAExecutionProvider",
                        "onnxruntime-tensorrt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class GenaiWheel:
    """The installed onnxruntime-genai distribution: its version and whether it is the CUDA
    build."""

    version: str
    cuda: bool


@dataclass(frozen=True)
class Probe:
    """What the machine offers: onnxruntime's providers (None: onnxruntime is missing), the
    CUDA device's compute capability (None: torch sees no CUDA device), whether torch has
    semi-structured sparse tensors, version strings, and the onnxruntime-genai wheel installed
    (None: none; its CUDA build or not)."""

    providers: tuple[str, ...] | None
    cuda_capability: tuple[int, int] | None
    semi_structured: bool = True
    versions: dict[str, str | None] = field(default_factory=dict)
    genai: GenaiWheel | None = None


@dataclass(frozen=True)
class Availability:
    """Whether runtime `name` can run here, why not if not, and where it would run."""

    name: str
    available: bool
    reason: str
    device: str
    provider: str | None
    versions: dict[str, str | None]

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict."""
        return asdict(self)


def onnxruntime_providers() -> tuple[str, ...] | None:
    """onnxruntime's available execution providers, or None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return tuple(onnxruntime.get_available_providers())


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of CUDA device 0, or None when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return int(major), int(minor)


def genai_wheel() -> GenaiWheel | None:
    """The installed onnxruntime-genai wheel, read from package metadata: importing the module
    loads native libraries, which the probe of every benchmark must not risk."""
    for distribution, cuda in _GENAI_DISTRIBUTIONS.items():
        try:
            return GenaiWheel(importlib.metadata.version(distribution), cuda)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str | None]:
    """torch, onnxruntime, onnxruntime-genai and CUDA versions and the device name, for the
    benchmark record."""
    try:
        import onnxruntime
        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else platform.processor() or platform.machine() or None)
    genai = genai_wheel()
    return {"torch": torch.__version__, "onnxruntime": ort_version,
            "onnxruntime_genai": genai.version if genai else None, "cuda": torch.version.cuda,
            "device": device}


def probe() -> Probe:
    """Read the machine: providers, CUDA capability, semi-structured support, versions, the
    onnxruntime-genai wheel."""
    return Probe(onnxruntime_providers(), cuda_capability(),
                 hasattr(torch.sparse, "to_sparse_semi_structured"), versions(), genai_wheel())


def check_runtime_name(name: str) -> str:
    """`name` if it is a known runtime; otherwise a ValueError listing them with a suggestion."""
    if name in RUNTIMES:
        return name
    close = difflib.get_close_matches(name, RUNTIMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown runtime {name!r}; choose one of {list(RUNTIMES)}{hint}")


def _onnxruntime_reason(name: str, found: Probe) -> str | None:
    """Why onnxruntime runtime `name` cannot run: onnxruntime or a provider it needs is missing
    (TensorRT also needs the CUDA provider, which runs the nodes TensorRT does not take)."""
    if found.providers is None:
        return NO_ONNXRUNTIME
    needed = [_EXECUTION_PROVIDERS[name]]
    if name == "onnxruntime-tensorrt":
        needed.append("CUDAExecutionProvider")
    missing = [provider for provider in needed if provider not in found.providers]
    if not missing:
        return None
    install = "" if name == "onnxruntime-cpu" else (
        " (install onnxruntime-gpu: pip install 'wanda-export[gpu]')")
    return f"onnxruntime has no {' and no '.join(missing)}{install}"


def _genai_reason(name: str, found: Probe) -> str | None:
    """Why onnxruntime-genai runtime `name` cannot run: the wheel (or onnxruntime under it) is
    missing; for CUDA, no device or a CPU-only wheel."""
    if found.genai is None:
        return NO_GENAI
    if found.providers is None:
        return NO_ONNXRUNTIME
    if GENAI_DEVICES[name] == "cpu":
        return None
    if found.cuda_capability is None:
        return NO_CUDA
    return None if found.genai.cuda else NO_GENAI_CUDA


def _sparse24_reason(found: Probe) -> str | None:
    """Why torch's semi-structured 2:4 kernels cannot run: no API, no CUDA, or too old a GPU."""
    if not found.semi_structured:
        return (f"torch {found.versions.get('torch')} has no "
                "torch.sparse.to_sparse_semi_structured (torch >= 2.1 needed)")
    if found.cuda_capability is None:
        return NO_CUDA
    if found.cuda_capability < SPARSE24_MIN_CAPABILITY:
        have = ".".join(map(str, found.cuda_capability))
        need = ".".join(map(str, SPARSE24_MIN_CAPABILITY))
        return f"compute capability {have} < {need} needed for semi-structured 2:4 kernels"
    return None


def runtime_availability(name: str, found: Probe | None = None) -> Availability:
    """Whether runtime `name` can run here (on `found`, the machine as probed when not given).

    Raises ValueError for an unknown name, with the choices and the closest match.
    """
    check_runtime_name(name)
    found = found if found is not None else probe()
    if name in _EXECUTION_PROVIDERS:
        reason = _onnxruntime_reason(name, found)
    elif name in GENAI_DEVICES:
        reason = _genai_reason(name, found)
    else:
        reason = _sparse24_reason(found) if name == "torch-sparse24" else None
    cuda = found.cuda_capability is not None
    cpu = name in ("onnxruntime-cpu", "onnxruntime-genai") or (name == "torch" and not cuda)
    device = "cpu" if cpu else "cuda"
    provider = _EXECUTION_PROVIDERS.get(name)
    return Availability(name, reason is None, reason or "available", device, provider,
                        dict(found.versions))
