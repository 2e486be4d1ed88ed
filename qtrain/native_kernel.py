"""The compiled path of the ``ry`` simulator (``--compile``): a C++ kernel for the circuit's
probabilities and their adjoint gradient, built on first use and cached. The same library holds
the generator's mapping kernel (``qtrain/map_kernel.cpp``, used by :mod:`qtrain.mapping_kernel`).

The kernel (``qtrain/ry_kernel.cpp``) is plain C++ with no torch headers, so it builds in about
two seconds with one compiler call (``$CXX`` or ``c++``, ``-O3 -march=native``): :func:`load`
writes the library to a temporary file and renames it into the cache (``QTRAIN_KERNEL_DIR``, else
``$XDG_CACHE_HOME/qtrain`` or ``~/.cache/qtrain``) under a name made of the hash of the source,
the flags, the compiler and the CPU, and calls its ``extern "C"`` entry points through ctypes
(which releases the GIL). A later process finds the library built and only loads it; a changed
source, compiler or CPU gets its own build.

:func:`ry_probs` is one autograd node: probabilities (B, 2^n) for angles (B, L, n), computed in
``dtype`` (the angles' by default; float64 for "exact"), returned in the angles' dtype, with the
angles' gradient by the adjoint method (the forward pass keeps every block's state up to
:data:`STORE_BYTES` per angle set; above, the backward pass un-computes them).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .errors import QTrainError
from .ry_adjoint import grad_needed

SOURCE = Path(__file__).with_name("ry_kernel.cpp")
# built into the same library: the mapping MLP and the post-processing (qtrain.mapping_kernel)
SOURCES = [SOURCE, Path(__file__).with_name("map_kernel.cpp")]
NAME = "qtrain_ry_kernel"
FLAGS = ["-O3", "-fno-math-errno", "-pthread", "-shared", "-fPIC", "-std=c++17"]

# the C++ defaults of ry_tune(tile bits float, tile bits double, group bits)
DEFAULT_TUNING = (16, 15, 6)
_HINT = "--compile needs a C++ compiler (g++ or clang++; $CXX picks one): install one or drop --compile"

_lib = None
_checked_perms: set[int] = set()
# (compute dtype, output dtype) -> entry point suffix
_SUFFIX = {(torch.float32, torch.float32): "ff", (torch.float64, torch.float64): "dd",
           (torch.float64, torch.float32): "df"}


def flags() -> list[str]:
    """The compiler flags: ``-march=native`` unless ``QTRAIN_KERNEL_ARCH`` names a target (e.g.
    ``x86-64-v3``, for a cache shared by different CPUs; ``x86-64`` builds the portable paths)."""
    return [f"-march={os.environ.get('QTRAIN_KERNEL_ARCH') or 'native'}", *FLAGS]


class _Kernel:
    """The loaded library's entry points, with their ctypes signatures."""

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self.forward, self.backward = {}, {}
        for key, suffix in _SUFFIX.items():
            fwd = getattr(lib, f"ry_forward_{suffix}")
            fwd.argtypes, fwd.restype = [ptr, i64, i32, i32, ptr, i32, ptr, i32], None
            bwd = getattr(lib, f"ry_backward_{suffix}")
            bwd.argtypes, bwd.restype = [ptr, i64, i32, i32, ptr, i32, ptr, ptr, i32], None
            self.forward[key], self.backward[key] = fwd, bwd
        self.tune = lib.ry_tune
        self.tune.argtypes, self.tune.restype = [i32, i32, i32], None
        f32 = ctypes.c_float
        self.map_forward, self.map_backward = lib.map_forward, lib.map_backward
        self.map_forward.argtypes = [ptr, i64, i64, i32, i32, i32, i32, f32, f32, f32] + [ptr] * 9
        self.map_backward.argtypes = [ptr, i64, i64, i32, i32, i32, i32] + [ptr] * 11
        self.std_forward, self.std_backward = lib.std_forward, lib.std_backward
        self.std_forward.argtypes = [ptr, i32] + [ptr] * 7
        self.std_backward.argtypes = [ptr, i32, ptr, i64] + [ptr] * 7
        self.std_forward.restype = self.std_backward.restype = None
        self.map_forward.restype = self.map_backward.restype = None
        self.gen_forward, self.gen_backward = lib.gen_forward, lib.gen_backward  # generator_kernel.py
        self.gen_forward.argtypes = [ptr, ptr, ptr, ptr, f32, f32, f32] + [ptr] * 15
        self.gen_backward.argtypes = [ptr] * 24
        self.gen_forward.restype = self.gen_backward.restype = None


def compiler() -> str | None:
    """The C++ compiler the kernel is built with (``$CXX``, else ``c++``), if found."""
    return shutil.which(os.environ.get("CXX") or "c++")


def available() -> bool:
    """Whether the kernel can be built here (a C++ compiler is on the PATH)."""
    return compiler() is not None


def cache_dir() -> Path:
    """Where built kernels are kept: ``QTRAIN_KERNEL_DIR``, else the user's cache folder."""
    if os.environ.get("QTRAIN_KERNEL_DIR"):
        return Path(os.environ["QTRAIN_KERNEL_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qtrain"


def _cpu() -> str:
    """What -march=native depends on: the CPU model and its feature flags (Linux), else the arch."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return "\n".join(sorted({line for line in info.splitlines()
                                 if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.machine() + platform.processor()


def _build(cxx: str, target: Path) -> None:
    """Compile the kernel into ``target``, atomically: a temporary file renamed into place, so a
    concurrent or interrupted build never leaves a broken library behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *flags(), *map(str, SOURCES), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
            names = " + ".join(src.name for src in SOURCES)
            raise QTrainError(f"{_HINT} (building {names} with {cxx} failed: {first[:200]})")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> _Kernel:
    """Build (first use, or for a new source, compiler or CPU) and load the kernel, once per
    process.

    Raises:
        QTrainError: no C++ compiler, or the build failed.
    """
    global _lib
    if _lib is not None:
        return _lib
    cxx = compiler()
    if cxx is None:
        raise QTrainError(_HINT)
    parts = [*(src.read_text() for src in SOURCES), *flags(), os.path.realpath(cxx), _cpu()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    target = cache_dir() / f"{NAME}-{key}.so"
    if not target.is_file():
        try:
            _build(cxx, target)
        except OSError as exc:  # an unwritable cache folder
            raise QTrainError(f"cannot build the compiled kernel in {target.parent} ({exc.strerror}):"
                              " set QTRAIN_KERNEL_DIR to a writable folder, or drop --compile") from exc
    _lib = _Kernel(str(target))
    return _lib


def _check_perm(n: int, perm: torch.Tensor | None, inverse: torch.Tensor | None) -> None:
    """The kernel computes the CNOT ring's permutation from index bits: check, once per n, that
    the caller's ``perm`` (and ``inverse``) are that permutation."""
    if n in _checked_perms or (perm is None and inverse is None):
        return
    j = torch.arange(2**n)
    src = j ^ (j >> 1) ^ ((j & 1) * (3 << (n - 2)))
    if perm is not None and not torch.equal(perm.cpu().long(), src):
        raise ValueError(f"perm is not the {n}-qubit CNOT ring the kernel implements")
    if inverse is not None and not torch.equal(inverse.cpu().long(), torch.argsort(src)):
        raise ValueError(f"inverse is not the inverse of the {n}-qubit CNOT ring")
    _checked_perms.add(n)


# Up to this many bytes per angle set, the forward pass keeps every block's state and the backward
# pass reads them instead of un-computing psi. Measured fwd+bwd, one thread, 8 blocks: 1.08x faster
# at 13 qubits in float64 (backward alone 1.27x), 1.32x at 18 (16 MiB); at 20 qubits in float32
# (32 MiB) storing was 0.91x, so larger states un-compute and keep one state's memory.
STORE_BYTES = 16 << 20


def stores_blocks(blocks: int, n: int, dtype: torch.dtype) -> bool:
    """Whether the gradient reads stored block states (see :data:`STORE_BYTES`)."""
    return blocks * 2**n * (8 if dtype == torch.float64 else 4) <= STORE_BYTES


class RyProbsKernel(torch.autograd.Function):
    """Probabilities (B, 2^n) of the ry circuit for angles (B, L, n) by the C++ kernel, computed
    in ``dtype`` (float32 or float64), returned and differentiated in the angles' dtype."""

    @staticmethod
    def forward(ctx, theta, dtype, keep):
        kernel = load()
        batch, blocks, n = theta.shape
        out = theta.dtype if (dtype, theta.dtype) in _SUFFIX else dtype
        th = theta.detach().to(dtype=dtype, copy=False).contiguous()
        probs = torch.empty(batch, 2**n, dtype=out)
        stored = keep and stores_blocks(blocks, n, dtype)
        states = torch.empty(batch, blocks if stored else 1, 2**n, dtype=dtype) if keep else None
        kernel.forward[(dtype, out)](th.data_ptr(), batch, blocks, n,
                                     states.data_ptr() if keep else None, stored, probs.data_ptr(),
                                     torch.get_num_threads())
        if keep:
            ctx.th, ctx.states, ctx.stored, ctx.key = th, states, stored, (dtype, out)
        return probs.to(theta.dtype, copy=False)

    @staticmethod
    def backward(ctx, grad_p):
        th, out = ctx.th, ctx.key[1]
        batch, blocks, n = th.shape
        gp = grad_p.to(dtype=out).contiguous()
        grad = torch.empty(batch, blocks, n, dtype=torch.float64)
        load().backward[ctx.key](th.data_ptr(), batch, blocks, n, ctx.states.data_ptr(), ctx.stored,
                                 gp.data_ptr(), grad.data_ptr(), torch.get_num_threads())
        return grad.to(grad_p.dtype), None, None


def ry_probs(theta: torch.Tensor, perm: torch.Tensor | None = None, inverse: torch.Tensor | None = None,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """Probabilities (B, 2^n) of the ry circuit for angles ``theta`` (B, L, n) on the CPU, in
    ``dtype`` (float32 or float64; the angles' by default), returned in the angles' dtype and
    differentiable in the angles. ``perm``/``inverse`` (``qtrain.simulate.ring_permutation`` and
    its inverse) are optional: the kernel computes the ring from index bits and checks them once.
    """
    if theta.dim() != 3:
        raise ValueError(f"theta must be (B, L, n), got shape {tuple(theta.shape)}")
    if theta.device.type != "cpu":
        raise ValueError(f"the compiled ry kernel runs on the CPU, not on {theta.device}")
    n = theta.shape[-1]
    if not 2 <= n <= 40:
        raise ValueError(f"the compiled ry kernel needs 2 to 40 qubits, got {n}")
    dtype = dtype or theta.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the compiled ry kernel computes in float32 or float64, not {dtype}")
    _check_perm(n, perm, inverse)
    return RyProbsKernel.apply(theta, dtype, grad_needed(theta))
