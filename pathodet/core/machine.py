"""What this machine can do, and the choices that follow: precision and CPU threads.

Machines of one kind differ in CPU generation. bf16 autocast is only fast where the
hardware computes in bf16: on a CPU with AVX-512-BF16 or AMX tiles (and oneDNN allowed to
use them), or a CUDA GPU with bf16 support. Elsewhere torch emulates it, about 50x slower
than fp32 (measured: a ResNet-18 forward pass, batch 4 at 256 px, 8.9 s in bf16 against
0.17 s in fp32 with torch and oneDNN limited to AVX2 kernels). So ``precision: auto``, the
default everywhere, picks bf16 only where it is native, and an explicit ``bf16`` on an
emulating CPU warns.

Threads: every torch process claims all cores by default, and idle OpenMP threads spin
while waiting for work. Two such processes on one small machine slow each other down 10x
or more. :func:`configure_threads` gives each process its share of the cores it may use;
``pathodet/__init__.py`` makes idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``)
before torch starts its thread pool.
"""

from __future__ import annotations

import atexit
import functools
import os
import platform
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
"""A resolved precision: what autocast runs in."""

PrecisionSetting = Literal["auto", "fp32", "bf16"]
"""What a config or command line may ask for; ``auto`` is resolved by :func:`resolve_precision`."""

_ANNOUNCED: set[str] = set()  # device types whose precision choice has been logged


def cpu_model() -> str:
    """The CPU's marketing name (``lscpu``'s "Model name"), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` without one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_bf16_native() -> tuple[bool, str]:
    """Whether bf16 runs natively on this CPU, and why, in words.

    Native means: the CPU has AVX-512-BF16 or AMX tiles, torch's kernels are not limited
    below AVX-512 (``ATEN_CPU_CAPABILITY``), and oneDNN may use bf16 instructions
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which honours
    ``ONEDNN_MAX_CPU_ISA``). Computed once per process (``autocast`` asks on every
    forward pass).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    hw = []
    if torch.cpu._is_avx512_bf16_supported():
        hw.append("AVX-512-BF16")
    if torch.cpu._is_amx_tile_supported():
        hw.append("AMX")
    onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not hw:
        return False, f"the CPU has neither AVX-512-BF16 nor AMX (capability {capability})"
    if not capability.upper().startswith("AVX512"):
        return False, (
            f"the CPU has {'/'.join(hw)} but torch's kernels are limited to {capability}"
        )
    if not onednn:
        return False, f"the CPU has {'/'.join(hw)} but oneDNN may not use bf16 (ONEDNN_MAX_CPU_ISA)"
    return True, f"the CPU has {'/'.join(hw)} (capability {capability})"


def bf16_native(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 autocast is native on ``device`` (CPU or CUDA), and why."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'supports' if ok else 'does not support'} bf16"
    return cpu_bf16_native()


def resolve_precision(setting: str, device: torch.device | str = "cpu", log=None) -> Precision:
    """The precision to run in: ``auto`` becomes ``bf16`` where it is native, else ``fp32``.

    The choice for ``auto`` is logged once per device type, with the reason (to stderr, or
    to ``log``). An explicit ``bf16`` where it is only emulated warns (``UserWarning``) once
    that it will be much slower; it is still honoured.

    Raises:
        ValueError: ``setting`` is not ``auto``, ``fp32`` or ``bf16``.
    """
    device = torch.device(device)
    if setting not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {setting!r}")
    if setting == "fp32":
        return "fp32"
    native, why = bf16_native(device)
    key = f"{setting}:{device.type}"
    if setting == "bf16":
        if not native and key not in _ANNOUNCED:
            _ANNOUNCED.add(key)
            warnings.warn(
                f"precision bf16 on {device.type}: bf16 is emulated here ({why}), about 50x "
                "slower than fp32; use precision auto or fp32",
                stacklevel=2,
            )
        return "bf16"
    chosen: Precision = "bf16" if native else "fp32"
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        message = f"pathodet: precision auto -> {chosen} on {device.type}: {why}"
        if log is not None:
            log(message)
        else:
            print(message, file=sys.stderr)
    return chosen


def autocast(precision: str, device: torch.device):
    """Autocast context for ``bf16`` (CPU or CUDA), a no-op for ``fp32``; ``auto`` is
    resolved first (:func:`resolve_precision`: bf16 where native). Losses stay fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def machine_record(precision: str | None = None, device: torch.device | str = "cpu") -> dict:
    """What a checkpoint, benchmark or report records of the machine it ran on: CPU model,
    torch's CPU capability, whether bf16 is native on the CPU, cores, torch threads, torch
    version, the precision used (when given) and the device; on CUDA also the GPU's name
    and whether bf16 is native there."""
    native, why = cpu_bf16_native()
    device = torch.device(device)
    record = {
        "device": device.type,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": native,
        "bf16_reason": why,
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    if precision is not None:
        record["precision"] = precision
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["gpu_bf16_native"] = bf16_native(device)[0]
    return record


def machine_label(record: dict | None) -> str:
    """A short name for the machine a :func:`machine_record` describes, with its kernels and
    the precision it ran in: ``Intel(R) Xeon(R) Processor (AVX512, bf16)`` on a CPU (torch's
    CPU capability), ``NVIDIA H200 (cuda, bf16)`` on a GPU. Made for tables whose rows come
    from different machines; a key an older record lacks reads ``?``."""
    r = record or {}
    if r.get("device") == "cuda":
        return f"{r.get('gpu', '?')} (cuda, {r.get('precision', '?')})"
    return f"{r.get('cpu_model', '?')} ({r.get('cpu_capability', '?')}, {r.get('precision', '?')})"


def machine_line(record: dict | None = None) -> str:
    """One line naming the CPU, its capability and the threads: the head of every timing."""
    r = record or machine_record()
    bf16 = "native bf16" if r["bf16_native"] else "no native bf16"
    return (f"{r['cpu_model']}, torch CPU capability {r['cpu_capability']} ({bf16}), "
            f"{r['cores']} cores, {r['torch_threads']} torch threads")  # fmt: skip


def local_world_size() -> int:
    """Processes of this job on this machine: ``LOCAL_WORLD_SIZE`` under torchrun, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads: ``requested``; else, under torchrun
    (``LOCAL_WORLD_SIZE``), this process's share of the cores it may use
    (:func:`usable_cores` divided among the local ranks, at least 1); else
    ``OMP_NUM_THREADS`` when the user set it (torch has already read it); else the usable
    cores.

    Without any of these, the process shares the usable cores with the other pathodet
    processes on this machine (:func:`share_cores`).

    Returns the number in force.
    """
    global _SHARING
    if (
        requested is None
        and "LOCAL_WORLD_SIZE" not in os.environ
        and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit()
    ):
        _SHARING = False
        return torch.get_num_threads()
    # a process left to choose shares the cores with other pathodet processes once it
    # computes (share_cores, at its first step); until then it claims them all
    _SHARING = requested is None and "LOCAL_WORLD_SIZE" not in os.environ
    n = requested or max(1, usable_cores() // local_world_size())
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# -- sharing the cores with other pathodet processes --------------------------------------

_SHARING = False  # set by configure_threads: no explicit threads, not under torchrun
_LAST_CHECK = -1e9
_REGISTERED = False
SHARE_CHECK_SECONDS = 1.0
"""How often a running process looks for other pathodet processes (at its next step)."""

SHARE_IDLE_SECONDS = 5.0
"""A registered process that has not computed for this long is not counted (a test
runner between tests, the review app after a prediction): its file's time is refreshed at
every look."""


def _registry() -> Path:
    """One empty file per live pathodet process that shares the cores, named by its pid."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"pathodet-cores-{uid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unregister() -> None:
    (_registry() / str(os.getpid())).unlink(missing_ok=True)


def share_cores() -> int:
    """Give this process its share of the usable cores among the live pathodet processes
    on this machine that compute (each registered by a file in a temporary folder at its
    first call; a killed process's file is removed by the next one that looks). Called at
    every training step and
    prediction batch, it looks at most once per :data:`SHARE_CHECK_SECONDS`, so a process
    running alone takes every core and gives half back when a second one starts.

    Two torch processes that each claim both cores of a 2-core machine slow each other
    down 8-9x (docs/benchmarks/speed.md); with one core each they barely slow down.
    Does nothing unless :func:`configure_threads` found the threads free to choose (no
    ``--threads``, ``train.threads``, ``OMP_NUM_THREADS`` or torchrun). Returns the
    threads in force.
    """
    global _LAST_CHECK, _REGISTERED
    now = time.monotonic()
    if not _SHARING or now - _LAST_CHECK < SHARE_CHECK_SECONDS:
        return torch.get_num_threads()
    _LAST_CHECK = now
    folder = _registry()
    try:
        folder.mkdir(exist_ok=True)
        (folder / str(os.getpid())).touch()  # registers, and says "computing now"
        if not _REGISTERED:
            atexit.register(_unregister)
            _REGISTERED = True
        live, wall = 0, time.time()
        for entry in folder.iterdir():
            if not entry.name.isdigit():
                continue
            if not _alive(int(entry.name)):
                entry.unlink(missing_ok=True)
            elif wall - entry.stat().st_mtime <= SHARE_IDLE_SECONDS:
                live += 1
    except OSError:  # no writable temporary folder: keep what we have
        return torch.get_num_threads()
    n = max(1, usable_cores() // max(live, 1))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
