"""This process's memory, as the API (`ram_usage_mb`) and `cactus bench` report it.

Weights are mmapped, so resident memory (RSS) counts the page cache's pages of the weight file;
what the process itself holds (KV cache, scratch, Python) is the private part:
- Linux: /proc/self/status: VmRSS, VmHWM (peak RSS), RssAnon (private), RssShmem.
- macOS: task_info: MACH_TASK_BASIC_INFO's resident_size, TASK_VM_INFO's phys_footprint (what
  Activity Monitor calls Memory: anonymous and compressed pages, no clean file pages) and its peak
  (rev3, `ledger_phys_footprint_peak`); peak RSS from getrusage (bytes there).
Elsewhere: getrusage's peak only; what cannot be read is None, never 0.
"""

from __future__ import annotations

import ctypes
import os
import sys

LINUX = sys.platform.startswith("linux")
DARWIN = sys.platform == "darwin"


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int:
    """Current resident set size (not the peak)."""
    try:
        with open("/proc/self/statm") as f:  # Linux: pages; second field is resident
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    if DARWIN:
        try:
            return _mach_basic_info().resident_size
        except OSError:
            pass
    return peak_rss_bytes()  # last resort: the peak, which is >= current


def peak_rss_bytes() -> int:
    hwm = _status_bytes("VmHWM") if LINUX else None
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if DARWIN else peak * 1024  # bytes on macOS, KiB on Linux and the BSDs


def private_bytes() -> int | None:
    """Memory the process holds itself, weights' page cache excluded (RssAnon; phys_footprint)."""
    if LINUX:
        return _status_bytes("RssAnon")
    return _mach_vm_info()[0] if DARWIN else None


def peak_private_bytes() -> int | None:
    """The kernel's own peak of private_bytes where it keeps one (macOS 10.15+), else None."""
    return _mach_vm_info()[1] if DARWIN else None


def shmem_bytes() -> int | None:
    return _status_bytes("RssShmem") if LINUX else None


PRIVATE_NAME = "RssAnon" if LINUX else "phys_footprint" if DARWIN else None


# ---------------------------------------------------------------------------- macOS: task_info

class _TimeValue(ctypes.Structure):
    _fields_ = [("seconds", ctypes.c_int), ("microseconds", ctypes.c_int)]


class _MachTaskBasicInfo(ctypes.Structure):  # <mach/task_info.h>, packed to 4 bytes
    _pack_ = 4
    _fields_ = [("virtual_size", ctypes.c_uint64), ("resident_size", ctypes.c_uint64),
                ("resident_size_max", ctypes.c_uint64),
                ("user_time", _TimeValue), ("system_time", _TimeValue),
                ("policy", ctypes.c_int), ("suspend_count", ctypes.c_int)]


class _TaskVmInfo(ctypes.Structure):  # struct task_vm_info up to rev3's first field, packed to 4
    _pack_ = 4
    _fields_ = ([("virtual_size", ctypes.c_uint64), ("region_count", ctypes.c_int32), ("page_size", ctypes.c_int32)]
                + [(name, ctypes.c_uint64) for name in (
                    "resident_size", "resident_size_peak", "device", "device_peak", "internal", "internal_peak",
                    "external", "external_peak", "reusable", "reusable_peak", "purgeable_volatile_pmap",
                    "purgeable_volatile_resident", "purgeable_volatile_virtual", "compressed", "compressed_peak",
                    "compressed_lifetime",
                    "phys_footprint",  # rev1
                    "min_address", "max_address",  # rev2
                    "ledger_phys_footprint_peak")])  # rev3


MACH_TASK_BASIC_INFO, TASK_VM_INFO = 20, 22
# counts are in 4-byte words: rev1 ends after phys_footprint, rev3's first field after max_address
_REV1_WORDS = _TaskVmInfo.phys_footprint.offset // 4 + 2
_REV3_PEAK_WORDS = _TaskVmInfo.ledger_phys_footprint_peak.offset // 4 + 2


def _task_info(flavor: int, info: ctypes.Structure) -> int:
    """task_info(mach_task_self(), flavor, &info, &count) -> the count the kernel filled (words)."""
    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
    task = ctypes.c_uint32.in_dll(libc, "mach_task_self_")  # mach_task_self() is a macro for this
    count = ctypes.c_uint32(ctypes.sizeof(info) // 4)
    kr = libc.task_info(task, flavor, ctypes.byref(info), ctypes.byref(count))
    if kr != 0:
        raise OSError(f"task_info({flavor}) failed ({kr})")
    return int(count.value)


def _mach_basic_info() -> _MachTaskBasicInfo:
    info = _MachTaskBasicInfo()
    _task_info(MACH_TASK_BASIC_INFO, info)
    return info


def _mach_vm_info() -> tuple[int | None, int | None]:
    """(phys_footprint, its peak), each None where this macOS does not give it (the peak needs
    rev3 of the struct, macOS 10.15+)."""
    info = _TaskVmInfo()
    try:
        words = _task_info(TASK_VM_INFO, info)
    except OSError:
        return None, None
    if words < _REV1_WORDS:
        return None, None
    peak = int(info.ledger_phys_footprint_peak) if words >= _REV3_PEAK_WORDS else None
    return int(info.phys_footprint), peak
