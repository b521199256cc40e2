"""Which CPUs the kernel threads run on, and how many threads by default.

Decode splits each op into a few chunks per thread that threads claim as they come, so a job
lasts as long as its slowest chunk: a thread on a core two or three times slower (an efficiency
core of Apple Silicon, an Intel E-core, an Arm LITTLE core) or on the second hardware thread of a
core already busy holds every job up. The default is therefore one thread per physical core of
the fastest kind, and workers are pinned one per such core before any core's second thread or a
slower core is used (`CACTUS_THREADS` or `--threads` asks for more).

- Linux: this process's CPUs (`sched_getaffinity`), grouped into cores by
  `topology/core_cpus_list` (SMT siblings), of the fast kind by the `cpu_core` PMU's CPU list on
  Intel hybrid parts (P-cores; `cpu_atom` lists the E-cores), else by `cpu_capacity` (Arm, RISC-V:
  a core counts when its capacity is over half the largest, so big and prime cores, not LITTLE).
  No more threads than the CPU time a cgroup quota allows (containers started with `--cpus`).
- macOS: `hw.perflevel0.physicalcpu` (performance cores), else `hw.physicalcpu`; threads are not
  pinned (macOS has no CPU affinity).
"""

from __future__ import annotations

import math
import os
import sys

SYSFS = "/sys/devices"


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def linux_plan(cpus: list[int], sysfs: str = SYSFS) -> tuple[list[int], int]:
    """(cpus ordered for pinning, number of fast physical cores): the first CPU of each fast core,
    then the other hardware threads of fast cores, then the slower cores' CPUs."""
    base = f"{sysfs}/system/cpu"
    core_of: dict[int, str] = {}
    for c in cpus:
        topo = f"{base}/cpu{c}/topology/"
        siblings = _read(topo + "core_cpus_list") or _read(topo + "thread_siblings_list")
        core_of[c] = siblings if siblings is not None else f"cpu{c}"
    capacity = {c: _read(f"{base}/cpu{c}/cpu_capacity") for c in cpus}
    p_cores = _read(f"{sysfs}/cpu_core/cpus")
    if p_cores is not None and _read(f"{sysfs}/cpu_atom/cpus"):
        fast = set(parse_cpulist(p_cores)) & set(cpus) or set(cpus)
    elif all(v is not None and v.isdigit() for v in capacity.values()) and cpus:
        top = max(int(v) for v in capacity.values())
        fast = {c for c in cpus if 2 * int(capacity[c]) > top}
    else:
        fast = set(cpus)
    firsts, rest, seen = [], [], set()
    for c in sorted(fast):
        (rest if core_of[c] in seen else firsts).append(c)
        seen.add(core_of[c])
    return firsts + rest + sorted(set(cpus) - fast), max(1, len(firsts))


def _sysctl_int(name: str) -> int | None:
    """macOS sysctlbyname for an integer value; None where it is missing."""
    import ctypes

    try:
        libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
    except OSError:
        return None
    value, size = ctypes.c_int64(0), ctypes.c_size_t(8)
    if libc.sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return None
    return int(value.value) if size.value in (4, 8) else None


def cgroup_cpus(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float | None:
    """CPUs' worth of time this process's cgroup and its ancestors allow (the smallest
    quota / period: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), or None where
    none is set. A container started with `--cpus=2` on a 32-core host sees 32 CPUs it may run on
    but only two CPUs' time: 32 spinning threads would spend most of it throttled."""
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found: list[float] = []

    def ancestors(path: str) -> list[str]:
        parts = [x for x in path.split("/") if x]
        return ["/" + "/".join(parts[:i]) if i else "" for i in range(len(parts), -1, -1)]

    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":  # v2 (pure, or the unified half of a hybrid)
            for mount in (root, root + "/unified"):
                for a in ancestors(path):
                    text = _read(f"{mount}{a}/cpu.max")
                    quota, _, period = (text or "").partition(" ")
                    if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
                        found.append(int(quota) / int(period))
        elif "cpu" in controllers.split(","):  # v1
            for mount in (root + "/cpu", root + "/cpu,cpuacct", root + "/cpuacct,cpu"):
                for a in ancestors(path):
                    quota, period = _read(f"{mount}{a}/cpu.cfs_quota_us"), _read(f"{mount}{a}/cpu.cfs_period_us")
                    if quota and period and quota.isdigit() and period.isdigit() and int(period) > 0:
                        found.append(int(quota) / int(period))
    return min(found) if found else None


def cpu_name() -> str:
    """The processor's name, for reports: /proc/cpuinfo's model name (x86; Arm Linux often lacks
    one), macOS's machdep.cpu.brand_string, else the architecture."""
    if sys.platform == "darwin":
        import ctypes

        try:
            libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
            buf, size = ctypes.create_string_buffer(256), ctypes.c_size_t(256)
            if libc.sysctlbyname(b"machdep.cpu.brand_string", buf, ctypes.byref(size), None, ctypes.c_size_t(0)) == 0:
                return buf.value.decode(errors="replace").strip()
        except OSError:
            pass
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    import platform

    return platform.processor() or platform.machine() or "unknown"


def plan() -> tuple[list[int], int]:
    """(CPUs to pin workers to, in order, or [] for no pinning; default thread count)."""
    if sys.platform == "darwin":
        n = _sysctl_int("hw.perflevel0.physicalcpu") or _sysctl_int("hw.physicalcpu") or os.cpu_count() or 1
        return [], max(1, n)
    if hasattr(os, "sched_getaffinity"):
        order, n = linux_plan(sorted(os.sched_getaffinity(0)))
        limit = cgroup_cpus()
        return order, n if limit is None else max(1, min(n, math.ceil(limit - 1e-9)))
    return [], max(1, os.cpu_count() or 1)
