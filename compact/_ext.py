"""Builds the C++ kernels with torch.utils.cpp_extension on first use (cached) and falls back to PyTorch."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("prune3d.compact")

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ext.cpp", "kern_avx512.cpp", "kern_avx512_bf16.cpp", "kern_avx512_vnni.cpp", "kern_amx.cpp",
           "kern_avx2.cpp", "kern_generic.cpp", "winograd.cpp")
_lock = threading.Lock()
_state: dict = {}


def _source_hash() -> str:
    h = hashlib.sha1()
    for name in sorted(p.name for p in CSRC.iterdir() if p.suffix in (".cpp", ".h")):
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:10]


def load_kernels():
    """The compiled extension, or None (logged once) when it cannot be built or PRUNE3D_NO_KERNELS=1."""
    with _lock:
        if "ext" in _state:
            return _state["ext"]
        ext = None
        if os.environ.get("PRUNE3D_NO_KERNELS", "") not in ("", "0"):
            log.warning("compact: PRUNE3D_NO_KERNELS set, using the pure-PyTorch path (slower, same results)")
        else:
            try:
                from torch.utils import cpp_extension

                name = f"prune3d_compact_{_source_hash()}"
                ext = cpp_extension.load(
                    name=name,
                    sources=[str(CSRC / s) for s in SOURCES],
                    extra_cflags=["-O3", "-fopenmp", "-ffp-contract=fast"],
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
                log.info("compact: C++ kernels loaded (%s)", ext.isa())
            except Exception as e:  # no compiler, no headers, build error: stay correct, just slower
                log.warning("compact: could not build the C++ kernels (%s); using the pure-PyTorch path "
                            "(slower, same results)", str(e).strip().splitlines()[-1] if str(e).strip() else e)
                ext = None
        _state["ext"] = ext
        return ext


def kernels_available() -> bool:
    return load_kernels() is not None


def kernel_isa() -> str:
    ext = load_kernels()
    return ext.isa() if ext is not None else "pytorch"
