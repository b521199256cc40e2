"""The C kernel test (tests/c/test_kernels.c) built and run from pytest: natively with
AddressSanitizer + UBSan at every ISA level this CPU has, and cross-built for AArch64 (NEON +
dotprod) under qemu. Each is skipped cleanly where its compiler or emulator is missing, except
in CI: .ci/run installs them and lists those it has in CACTUS_CI_REQUIRE_KERNEL_TESTS, and a test
that would skip for a listed tool fails instead (a kernel level CI silently never tests).
"""

from __future__ import annotations

import os
import platform
import runpy
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
K = ROOT / "src" / "cactus" / "_kernels"
COMMON = ["kernels_scalar.c", "common.c", "formats.c", "dispatch.c", "driver.c", "small.c", "pool.c"]


def load_setup() -> dict:
    """setup.py's names (its ISA flag tables, target_machine), read without running the build."""
    real = setuptools.setup
    setuptools.setup = lambda **kw: None
    try:
        return runpy.run_path(str(ROOT / "setup.py"))
    finally:
        setuptools.setup = real


SETUP = load_setup()
X86, ARM = SETUP["X86"], SETUP["ARM"]  # the flags the package's build gives each ISA file

X86_HOST = platform.machine().lower() in ("x86_64", "amd64")
CLANG = next((c for c in ("clang", "clang-14", "clang-15", "clang-16") if shutil.which(c)), None)
SYSROOT = Path("/usr/aarch64-linux-gnu")
REQUIRED = set(os.environ.get("CACTUS_CI_REQUIRE_KERNEL_TESTS", "").replace(",", " ").split())


def libasan() -> str | None:
    if not shutil.which("gcc"):
        return None
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if path and Path(path).exists() else None


# what each kernel test needs, by the names .ci/run uses for them
TOOLS = {
    "gcc": lambda: shutil.which("gcc") is not None,
    "libasan": lambda: libasan() is not None,
    "qemu-x86_64": lambda: shutil.which("qemu-x86_64") is not None,
    "qemu-aarch64": lambda: shutil.which("qemu-aarch64") is not None,
    "aarch64-linux-gnu-gcc": lambda: shutil.which("aarch64-linux-gnu-gcc") is not None,
    "aarch64-sysroot": lambda: (SYSROOT / "include" / "stdio.h").is_file(),
    "clang": lambda: CLANG is not None,
}


def need(*tools: str) -> None:
    """Skip unless this machine has `tools`; fail instead for one CI said it has installed."""
    missing = [t for t in tools if not TOOLS[t]()]
    if not missing:
        return
    how = "apt-get install gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user clang, or run .ci/run as root"
    demanded = [t for t in missing if t in REQUIRED or "all" in REQUIRED]
    if demanded:
        pytest.fail(f"CI requires this kernel test but {', '.join(demanded)} is missing "
                    f"(CACTUS_CI_REQUIRE_KERNEL_TESTS={' '.join(sorted(REQUIRED))})")
    pytest.skip(f"needs {', '.join(missing)} ({how})")


def build(cc: str, out: Path, isa: dict[str, list[str]], flags: list[str], link: list[str],
          isa_cc: list[str] | None = None) -> None:
    """The C test against the ISA files, each compiled with its flags (by isa_cc, default cc)."""
    objs = []
    for src, extra in isa.items():
        obj = out.with_name(src + ".o")
        subprocess.run([*(isa_cc or [cc]), *flags, *extra, f"-I{K}", "-c", str(K / src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    srcs = [str(ROOT / "tests" / "c" / "test_kernels.c")] + [str(K / s) for s in COMMON]
    subprocess.run([cc, *flags, f"-I{K}", *srcs, *objs, "-lm", "-pthread", *link, "-o", str(out)], check=True)


def check_output(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout.strip().splitlines()[-1]


def test_native_with_sanitizers(tmp_path):
    need("gcc")
    isa = X86 if platform.machine().lower() in ("x86_64", "amd64") else {}
    flags = ["-O1", "-g", "-std=gnu11", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    exe = tmp_path / "test_kernels"
    build("gcc", exe, isa, flags, [])
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    check_output(proc)


@pytest.mark.skipif(not X86_HOST, reason="needs an x86-64 host (the x86 ISA files are built by its gcc)")
@pytest.mark.parametrize("cpu,levels", [("Nehalem", ["scalar", "ssse3"]), ("core2duo", ["scalar", "ssse3"]),
                                        ("qemu64", ["scalar"])])
def test_x86_without_avx2_under_qemu(tmp_path, cpu, levels):
    """CPUs without AVX (Nehalem, Core 2) must run ssse3, and one without SSSE3 the scalar table:
    the C test, built as the package builds it, under qemu-x86_64 emulating each."""
    need("gcc", "qemu-x86_64")
    exe = tmp_path / "test_kernels_x86"
    build("gcc", exe, X86, ["-O2", "-std=gnu11"], [])
    proc = subprocess.run(["qemu-x86_64", "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=300)
    check_output(proc)
    assert proc.stdout.splitlines()[0].split()[1:] == levels
    assert proc.stdout.splitlines()[1] == f"best: {levels[-1]}"


@pytest.mark.parametrize("cpu,levels", [("max", ["scalar", "neon80", "neon", "i8mm"]),
                                        ("cortex-a76", ["scalar", "neon80", "neon"]),
                                        ("cortex-a72", ["scalar", "neon80"]), ("cortex-a53", ["scalar", "neon80"])])
def test_neon_under_qemu(tmp_path, cpu, levels):
    """Every level the emulated CPU has, against the scalar table: `max` has dotprod and i8mm;
    cortex-a76 dotprod only (i8mm must not be picked); cortex-a72 (Raspberry Pi 4) and cortex-a53
    neither: NEON without sdot (neon80), whose emulated sdot must give sdot's sums."""
    need("aarch64-linux-gnu-gcc", "aarch64-sysroot", "qemu-aarch64")
    exe = tmp_path / "test_kernels_arm"
    build("aarch64-linux-gnu-gcc", exe, ARM, ["-O2", "-std=gnu11", "-static"], [])
    proc = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(exe)], capture_output=True, text=True, timeout=300)
    check_output(proc)
    assert proc.stdout.splitlines()[0].split()[1:] == levels
    assert proc.stdout.splitlines()[1] == f"best: {levels[-1]}"  # what dispatch runs there


def test_neon_built_by_clang_under_qemu(tmp_path):
    """Apple's compiler is clang: the NEON and i8mm files built by clang for AArch64 (the rest by
    gcc) against the scalar table, every level of `-cpu max`."""
    need("clang", "aarch64-linux-gnu-gcc", "aarch64-sysroot", "qemu-aarch64")
    exe = tmp_path / "test_kernels_arm_clang"
    clang = [CLANG, "--target=aarch64-linux-gnu", f"--sysroot={SYSROOT}", "-isystem", str(SYSROOT / "include")]
    build("aarch64-linux-gnu-gcc", exe, ARM, ["-O2", "-std=gnu11", "-static"], [], isa_cc=clang)
    proc = subprocess.run(["qemu-aarch64", "-cpu", "max", str(exe)], capture_output=True, text=True, timeout=300)
    check_output(proc)
    assert proc.stdout.splitlines()[0].split()[1:] == ["scalar", "neon80", "neon", "i8mm"]


ASAN_SCRIPT = """
import importlib.util, pathlib, sys, tempfile
import numpy as np
import cactus
spec = importlib.util.spec_from_file_location("cactus._kernels", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["cactus._kernels"] = cactus._kernels = mod
from cactus import engine, synthetic, shapes
from cactus.config import ModelConfig
tmp = pathlib.Path(tempfile.mkdtemp())
for kind in ("dense", "moe"):
    cfg = dict(shapes.config("lfm2-8b-a1b" if kind == "moe" else "lfm2-350m"), vocab_size=300, hidden_size=64,
               num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, moe_intermediate_size=40,
               num_experts=6, num_experts_per_tok=2, num_hidden_layers=4, num_dense_layers=1,
               layer_types=["conv", "full_attention", "conv", "full_attention"], block_ff_dim=96)
    shapes.SHAPES["tiny"] = cfg
    for quant in ("int4", "int8", "f32", "f16"):
        m = engine.load(synthetic.write("tiny", quant, tmp / f"{kind}-{quant}", progress=False))
        ids = np.random.default_rng(0).integers(0, 300, 120)
        m.forward(ids[:70])
        for t in ids[70:80]:
            m.forward([int(t)], last_only=True)
        m.forward(ids[80:], last_only=True)
print("ok")
"""


def test_extension_under_address_sanitizer(tmp_path):
    """The whole extension (driver, pool, binding) built with ASan, driving small models end to end."""
    need("gcc", "libasan")
    env = dict(os.environ, CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g", LDFLAGS="-fsanitize=address")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                    "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env, check=True, capture_output=True)
    so = next((tmp_path / "lib" / "cactus").glob("_kernels*.so"))
    run_env = dict(os.environ, LD_PRELOAD=libasan(), ASAN_OPTIONS="detect_leaks=0", CACTUS_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", ASAN_SCRIPT, str(so)], env=run_env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]


UNIVERSAL = "-arch arm64 -arch x86_64 -fno-common -dynamic -DNDEBUG -g -O3 -Wall"  # python.org's CFLAGS


@pytest.mark.parametrize("cflags, archflags, expect, pinned", [
    (UNIVERSAL, None, "arm64", "-arch arm64"),          # universal2 Python: pinned to this Mac
    (UNIVERSAL, "-arch x86_64", "x86_64", "-arch x86_64"),  # a cross build the user asked for
    (UNIVERSAL, "-arch arm64 -arch arm64", "arm64", "-arch arm64 -arch arm64"),
    ("-fno-common -O3 -Wall", None, "arm64", None),   # Homebrew / uv Python: nothing to pin
])
def test_macos_build_is_for_one_architecture(monkeypatch, cflags, archflags, expect, pinned):
    """A universal2 Python (python.org's macOS installers) would compile each file for arm64 and
    x86_64, and each ISA file has one architecture's flags (-march=armv8.2-a+dotprod cannot build
    an x86_64 slice): setup.py pins ARCHFLAGS, which distutils applies to every compile and link,
    and picks the ISA files of that arch. Only the logic runs here (no macOS on this machine)."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    monkeypatch.setattr(sysconfig, "get_config_var", lambda name: cflags if name == "CFLAGS" else None)
    monkeypatch.setenv("ARCHFLAGS", archflags or "")
    if archflags is None:
        monkeypatch.delenv("ARCHFLAGS")
    machine = SETUP["target_machine"]()
    assert machine == expect and os.environ.get("ARCHFLAGS") == pinned
    assert SETUP["isa_sources"](machine) == (ARM if expect == "arm64" else X86)


def test_macos_universal_build_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("ARCHFLAGS", "-arch arm64 -arch x86_64")
    with pytest.raises(SystemExit, match="one architecture at a time.*ARCHFLAGS='-arch arm64'"):
        SETUP["target_machine"]()


def test_linux_build_leaves_archflags_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.delenv("ARCHFLAGS", raising=False)
    assert SETUP["target_machine"]() == "aarch64" and "ARCHFLAGS" not in os.environ
    assert SETUP["isa_sources"]("aarch64") == ARM and SETUP["isa_sources"]("riscv64") == {}


def test_a_kernel_test_ci_has_the_tools_for_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setitem(TOOLS, "qemu-aarch64", lambda: False)
    monkeypatch.setattr(sys.modules[__name__], "REQUIRED", set())
    with pytest.raises(pytest.skip.Exception, match="needs qemu-aarch64"):
        need("qemu-aarch64")
    monkeypatch.setattr(sys.modules[__name__], "REQUIRED", {"gcc", "qemu-aarch64"})
    with pytest.raises(pytest.fail.Exception, match="CI requires this kernel test but qemu-aarch64 is missing"):
        need("gcc", "qemu-aarch64")
