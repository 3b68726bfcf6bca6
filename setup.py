"""Build of calign's C extension `calign._C`.

BLAS comes from one of two places, chosen by the environment variable
CALIGN_BLAS:
  * unset or "scipy-openblas" (default): the `scipy-openblas32` wheel, a build
    requirement pinned in pyproject.toml. Its shared library is copied next to
    the extension and found through an $ORIGIN rpath, so an installed calign
    needs nothing at run time but numpy.
  * "system": the system OpenBLAS, found through pkg-config (package
    `openblas`, e.g. Debian's libopenblas-dev).

CALIGN_SANITIZE=1 builds with -fsanitize=address,undefined (run Python with
LD_PRELOAD=$(gcc -print-file-name=libasan.so) to use it).

CALIGN_SIMD=baseline compiles the vectorised loops for baseline x86-64 only
(no AVX2 or AVX-512 clone): the path a CPU without AVX2 takes, which
tests/test_simd_fallback.py builds and checks against the normal build.
"""

import glob
import os
import shutil
import subprocess

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
BLAS_CHOICE = os.environ.get("CALIGN_BLAS", "scipy-openblas")
SANITIZE = os.environ.get("CALIGN_SANITIZE", "") not in ("", "0")
SIMD = os.environ.get("CALIGN_SIMD", "clones")
if SIMD not in ("clones", "baseline"):
    raise SystemExit(f"CALIGN_SIMD must be 'clones' or 'baseline', not {SIMD!r}")

sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
# -fno-trapping-math: calign never reads floating-point exception flags, and
# without it gcc will not vectorise floorf, so no loop that calls the
# vectorisable exp in core/simd.h gets vectorised.
compile_args = ["-O3", "-std=gnu11", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                "-Wall", "-Wextra",
                "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
link_args = ["-fopenmp"]
include_dirs = [numpy.get_include(), "csrc"]
library_dirs = []
libraries = ["dl"]  # dl: oneDNN is loaded at run time (core/onednn.c)
define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")]
runtime_library_dirs = []
blas_library_file = None

if BLAS_CHOICE == "scipy-openblas":
    import scipy_openblas32

    include_dirs.append(scipy_openblas32.get_include_dir())
    library_dirs.append(scipy_openblas32.get_lib_dir())
    libraries.append(scipy_openblas32.get_library())
    define_macros.append(("CALIGN_BLAS_SCIPY_OPENBLAS", "1"))
    blas_library_file = os.path.join(scipy_openblas32.get_lib_dir(),
                                     scipy_openblas32.get_library(fullname=True))
    link_args.append("-Wl,-rpath,$ORIGIN")
elif BLAS_CHOICE == "system":
    def pkg_config(flag):
        try:
            out = subprocess.run(["pkg-config", flag, "openblas"], check=True,
                                 capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit("CALIGN_BLAS=system needs pkg-config and the openblas "
                             f"package (e.g. apt-get install libopenblas-dev): {exc}")
        return out.split()

    for token in pkg_config("--cflags"):
        if token.startswith("-I"):
            include_dirs.append(token[2:])
    for token in pkg_config("--libs"):
        if token.startswith("-L"):
            library_dirs.append(token[2:])
            runtime_library_dirs.append(token[2:])
        elif token.startswith("-l"):
            libraries.append(token[2:])
    define_macros.append(("CALIGN_BLAS_SYSTEM", "1"))
else:
    raise SystemExit(f"CALIGN_BLAS must be 'scipy-openblas' or 'system', not {BLAS_CHOICE!r}")

if SIMD == "baseline":
    define_macros.append(("CALIGN_SIMD_BASELINE", "1"))

if SANITIZE:
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    compile_args = [f for f in compile_args if f != "-O3"] + ["-O1"] + flags
    link_args += flags


class BuildExtWithBlas(build_ext):
    """Copies the bundled OpenBLAS next to the extension ($ORIGIN rpath).

    Object files go to a folder per BLAS choice and sanitizer setting, and a
    change of either forces a rebuild, so a switch never reuses an extension
    built for the other."""

    def finalize_options(self):
        super().finalize_options()
        variant = BLAS_CHOICE + ("-sanitize" if SANITIZE else "") + \
            ("-baseline" if SIMD == "baseline" else "")
        stamp = os.path.join(self.build_temp, "calign-build-variant.txt")
        self.build_temp = os.path.join(self.build_temp, variant)
        previous = open(stamp).read() if os.path.exists(stamp) else None
        if previous != variant:
            self.force = True
            os.makedirs(os.path.dirname(stamp), exist_ok=True)
            with open(stamp, "w") as f:
                f.write(variant)

    def run(self):
        super().run()
        if blas_library_file is None:
            return
        for ext in self.extensions:
            target_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
            os.makedirs(target_dir, exist_ok=True)
            shutil.copy2(blas_library_file, target_dir)


setup(
    ext_modules=[
        Extension(
            "calign._C",
            sources=sources,
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            libraries=libraries,
            runtime_library_dirs=runtime_library_dirs,
            define_macros=define_macros,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
    cmdclass={"build_ext": BuildExtWithBlas},
)
