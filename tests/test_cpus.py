"""Default thread count and pinning order (cpus.py) on the CPU layouts users have: SMT x86,
Intel hybrid (P-cores with SMT + E-cores), Arm big.LITTLE, Apple Silicon; read from sysfs trees
written here, and the pinning itself checked on this machine's threads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cactus import cpus, ops


def sysfs(root: Path, cores: list[list[int]], capacity: dict[int, int] | None = None,
          p_cores: str | None = None, e_cores: str | None = None) -> str:
    """A /sys/devices tree: cores as lists of their hardware threads."""
    for sib in cores:
        for c in sib:
            d = root / "system" / "cpu" / f"cpu{c}"
            (d / "topology").mkdir(parents=True)
            (d / "topology" / "core_cpus_list").write_text(",".join(map(str, sib)) + "\n")
            if capacity:
                (d / "cpu_capacity").write_text(f"{capacity[c]}\n")
    for name, text in (("cpu_core", p_cores), ("cpu_atom", e_cores)):
        if text is not None:
            (root / name).mkdir()
            (root / name / "cpus").write_text(text + "\n")
    return str(root)


def test_parse_cpulist():
    assert cpus.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpus.parse_cpulist("5") == [5]


def test_smt_siblings_count_once_and_come_last(tmp_path):
    # 4 cores, siblings numbered n and n + 4 (AMD, most Intel servers)
    root = sysfs(tmp_path, [[0, 4], [1, 5], [2, 6], [3, 7]])
    assert cpus.linux_plan(list(range(8)), root) == ([0, 1, 2, 3, 4, 5, 6, 7], 4)
    # siblings adjacent (Intel client parts): one CPU per core first, not 0 and its sibling 1
    root = sysfs(tmp_path / "b", [[0, 1], [2, 3], [4, 5]])
    assert cpus.linux_plan(list(range(6)), root) == ([0, 2, 4, 1, 3, 5], 3)


def test_intel_hybrid_takes_p_cores(tmp_path):
    # 2 P-cores with SMT (cpus 0-3), 4 E-cores (4-7)
    root = sysfs(tmp_path, [[0, 1], [2, 3], [4], [5], [6], [7]], p_cores="0-3", e_cores="4-7")
    assert cpus.linux_plan(list(range(8)), root) == ([0, 2, 1, 3, 4, 5, 6, 7], 2)
    # a process allowed only E-cores still gets threads
    assert cpus.linux_plan([5, 6], root) == ([5, 6], 2)
    # kernels that also give x86 cores a capacity (E-cores about 0.6 of a P-core): still P-cores
    cap = {0: 1024, 1: 1024, 2: 1024, 3: 1024, 4: 620, 5: 620, 6: 620, 7: 620}
    root = sysfs(tmp_path / "b", [[0, 1], [2, 3], [4], [5], [6], [7]], capacity=cap, p_cores="0-3", e_cores="4-7")
    assert cpus.linux_plan(list(range(8)), root) == ([0, 2, 1, 3, 4, 5, 6, 7], 2)


def test_big_little_takes_the_big_cores(tmp_path):
    # 1 prime (1024) + 3 big (870) + 4 little (260) cores, no SMT
    cap = {0: 260, 1: 260, 2: 260, 3: 260, 4: 870, 5: 870, 6: 870, 7: 1024}
    root = sysfs(tmp_path, [[c] for c in range(8)], capacity=cap)
    assert cpus.linux_plan(list(range(8)), root) == ([4, 5, 6, 7, 0, 1, 2, 3], 4)
    # all one kind: every core
    root = sysfs(tmp_path / "b", [[c] for c in range(4)], capacity=dict.fromkeys(range(4), 1024))
    assert cpus.linux_plan(list(range(4)), root) == ([0, 1, 2, 3], 4)


def test_no_topology_counts_each_cpu(tmp_path):
    assert cpus.linux_plan([0, 1, 2], str(tmp_path)) == ([0, 1, 2], 3)


def cgroups(root: Path, proc_lines: list[str], files: dict[str, str]) -> tuple[str, str]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    proc = root / "proc_self_cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    return str(root), str(proc)


def test_cgroup_quota_caps_the_threads(tmp_path, monkeypatch):
    # v2, a container with --cpus=1.5 (its own cgroup is "/" in its namespace)
    root, proc = cgroups(tmp_path / "a", ["0::/"], {"cpu.max": "150000 100000"})
    assert cpus.cgroup_cpus(root, proc) == 1.5
    # v2 without a limit; a limit on an ancestor of a nested cgroup counts
    root, proc = cgroups(tmp_path / "b", ["0::/app/job"], {"cpu.max": "max 100000", "app/job/cpu.max": "max 100000",
                                                          "app/cpu.max": "300000 100000"})
    assert cpus.cgroup_cpus(root, proc) == 3.0
    # v1 (hybrid hierarchy): quota -1 is no limit, 200000/100000 is two CPUs
    root, proc = cgroups(tmp_path / "c", ["1:cpu,cpuacct:/", "0::/"],
                         {"cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cpus.cgroup_cpus(root, proc) is None
    root, proc = cgroups(tmp_path / "d", ["1:cpu,cpuacct:/", "0::/"],
                         {"cpu,cpuacct/cpu.cfs_quota_us": "200000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cpus.cgroup_cpus(root, proc) == 2.0
    assert cpus.cgroup_cpus(root, str(tmp_path / "missing")) is None
    # the default thread count: 1.5 CPUs of time -> 2 threads, however many cores are allowed
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(sys, "platform", "linux")
        monkeypatch.setattr(cpus, "linux_plan", lambda allowed: (list(range(16)), 16))
        monkeypatch.setattr(cpus, "cgroup_cpus", lambda: 1.5)
        assert cpus.plan() == (list(range(16)), 2)
        monkeypatch.setattr(cpus, "cgroup_cpus", lambda: 0.2)
        assert cpus.plan()[1] == 1
        monkeypatch.setattr(cpus, "cgroup_cpus", lambda: None)
        assert cpus.plan()[1] == 16


def test_apple_silicon_counts_performance_cores(monkeypatch):
    values = {"hw.perflevel0.physicalcpu": 8, "hw.physicalcpu": 12}
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(cpus, "_sysctl_int", values.get)
    assert cpus.plan() == ([], 8)
    del values["hw.perflevel0.physicalcpu"]  # Intel Macs, older macOS
    assert cpus.plan() == ([], 12)


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="pinning is Linux's, and needs two CPUs")
def test_workers_are_pinned_in_the_given_order():
    before = ops.threads()
    allowed = sorted(os.sched_getaffinity(0))

    def pinned() -> list[str]:
        out = []
        for tid in os.listdir("/proc/self/task"):
            for line in open(f"/proc/self/task/{tid}/status"):
                if line.startswith("Cpus_allowed_list:"):
                    out.append(line.split()[1])
        return out

    try:
        # both workers on the last CPU (unordered, worker i would take the i-th allowed CPU)
        ops._ext().set_threads(3, [allowed[-1]])
        deadline = time.monotonic() + 5  # workers pin themselves as they start
        while (got := pinned()).count(str(allowed[-1])) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got.count(str(allowed[-1])) == 2 and str(allowed[0]) not in got, got
        with pytest.raises(ValueError, match="out of range"):
            ops._ext().set_threads(2, [-1])
    finally:
        ops.set_threads(before)


@pytest.mark.parametrize("env,says", [({"CACTUS_THREADS": "abc"}, "CACTUS_THREADS must be a whole number"),
                                      ({"CACTUS_THREADS": "0"}, "CACTUS_THREADS must be a whole number"),
                                      ({"CACTUS_ISA": "nonesuch"}, "ISA 'nonesuch' is unknown")])
def test_bad_kernel_settings_fail_every_time(env, says):
    # a second use must fail too, never fall back silently to the numpy references
    code = ("from cactus import ops\n"
            "for _ in range(2):\n"
            "    try:\n"
            "        ops.isa()\n"
            "    except ValueError as e:\n"
            "        print('error:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, **env))
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(says in line for line in lines), out.stdout + out.stderr
