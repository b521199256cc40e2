"""Builds cactus._kernels: each ISA file is compiled with its own flags (never -march=native) and
linked into one extension; dispatch.c picks the best table at run time. Metadata is in pyproject.toml.
"""

import os
import platform
import re
import sys
import sysconfig

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

K = "src/cactus/_kernels/"
COMMON = ["binding.c", "tape.c", "driver.c", "small.c", "pool.c", "dispatch.c", "common.c", "formats.c",
          "kernels_scalar.c"]
X86 = {
    "kernels_ssse3.c": ["-mssse3"],
    "kernels_avx2.c": ["-mavx2", "-mfma", "-mf16c"],
    "kernels_avxvnni.c": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"],
    "kernels_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mgfni",
                         "-mavx2", "-mfma", "-mf16c"],
}
ARM = {"kernels_neon80.c": ["-march=armv8-a"], "kernels_neon.c": ["-march=armv8.2-a+dotprod"],
       "kernels_i8mm.c": ["-march=armv8.2-a+dotprod+i8mm"]}
# ISA files a compiler may not know the flags of (gcc < 11 has no -mavxvnni): built without that level
OPTIONAL = {"kernels_avxvnni.c": "CACTUS_NO_AVXVNNI", "kernels_i8mm.c": "CACTUS_NO_I8MM"}
BASE_FLAGS = ["-O3", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function"]


def _archs(flags: str | None) -> list[str]:
    return sorted(set(re.findall(r"-arch\s+(\S+)", flags or "")))


def target_machine() -> str:
    """The one architecture the extension is built for. On macOS a universal2 Python (python.org's
    installers: `-arch arm64 -arch x86_64` in its CFLAGS) compiles every file for both, and each
    ISA file carries one architecture's flags, so such a build is pinned to this Mac's arch through
    ARCHFLAGS (which distutils applies to every compile and link). An ARCHFLAGS naming one arch is
    followed (a cross build); one naming several is refused. Other Pythons are left alone (a
    Homebrew gcc, say, knows no -arch)."""
    machine = platform.machine().lower()
    if sys.platform != "darwin":
        return machine
    asked = _archs(os.environ.get("ARCHFLAGS"))
    if len(asked) > 1:
        sys.exit(f"cactus builds for one architecture at a time; ARCHFLAGS names {', '.join(asked)}: "
                 "set it to one, e.g. ARCHFLAGS='-arch arm64'")
    if asked:
        return asked[0]
    if len(_archs(sysconfig.get_config_var("CFLAGS"))) > 1:
        os.environ["ARCHFLAGS"] = f"-arch {machine}"
    return machine


def isa_sources(machine: str) -> dict[str, list[str]]:
    if machine in ("x86_64", "amd64"):
        return X86
    if machine in ("aarch64", "arm64"):
        return ARM
    return {}


class BuildKernels(build_ext):
    """Compile each ISA translation unit with its own flags, then link them into the extension."""

    def build_extension(self, ext):
        objects = []
        for src, flags in isa_sources(MACHINE).items():
            try:
                objects += self.compiler.compile([K + src], output_dir=self.build_temp, include_dirs=ext.include_dirs,
                                                 extra_postargs=BASE_FLAGS + flags,
                                                 depends=[K + "kernels.h", K + "kernels_avx2.c", K + "kernels_neon.c"])
            except CompileError:
                if src not in OPTIONAL:
                    raise
                print(f"warning: {src} not built (this compiler lacks {' '.join(flags)}); "
                      "that kernel level is left out", file=sys.stderr)
                ext.define_macros.append((OPTIONAL[src], "1"))
        ext.extra_objects = objects
        super().build_extension(ext)


MACHINE = target_machine()
ext = Extension(
    "cactus._kernels",
    sources=[K + s for s in COMMON],
    include_dirs=[np.get_include(), K],
    extra_compile_args=BASE_FLAGS,
    extra_link_args=[] if sys.platform == "darwin" else ["-pthread"],
    # the ISA files are compiled separately: list them so a change to one relinks the extension
    depends=[K + h for h in ("kernels.h", "driver.h", "pool.h", "tape.h")] + [K + s for s in (*X86, *ARM)],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildKernels})
