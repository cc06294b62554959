"""Builds the compiled core. Cython directives live here, once; RNNENGINE_DEBUG=1 turns the
bounds checks back on for a debug build."""
import glob
import os
from concurrent.futures import ThreadPoolExecutor

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("RNNENGINE_DEBUG") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
}

# No -march: ISA variants are compiled per function with target attributes and chosen at
# run time, so one build runs on any x86-64 (and the portable path builds on ARM).
compile_args = ["-O3", "-fno-math-errno", "-std=c11"] if os.name != "nt" else ["/O2"]
if DEBUG:
    compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-std=c11"]
# Sanitizer builds (tools/sanitized_build.sh): flags for the compile step and, separately, the
# link step (distutils adds $CFLAGS to the link line too, which would tie the extension to
# the compiler's ASan runtime even when another one is preloaded, as for the fuzzer).
compile_args += os.environ.get("RNNENGINE_SANITIZE_CFLAGS", "").split()
link_args = os.environ.get("RNNENGINE_SANITIZE_LDFLAGS", "").split()

def core_user(name, flags=()):
    """An extension that uses what core.kernels built (its cores, its ISA choice): the
    kernels' types only, their code is compiled once, in core.kernels (kernels.h:
    RNN_KERNELS_TYPES_ONLY). ``name`` is dotted below the package: "core.dense"."""
    return Extension(
        f"rnnengine.{name}",
        [f"src/rnnengine/{name.replace('.', '/')}.pyx"],
        include_dirs=["include", numpy.get_include()],
        depends=sorted(glob.glob("include/rnnengine/*.h")) + ["src/rnnengine/core/kernels.pxd"],
        # -fno-trapping-math lets GCC vectorise the clamps and selects of dense.h's exp
        extra_compile_args=compile_args + (["-fno-trapping-math", *flags]
                                           if os.name != "nt" else []),
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                       ("RNN_KERNELS_TYPES_ONLY", "1")]
        + ([("RNNENGINE_DEBUG", "1")] if DEBUG else []),
    )


extensions = [
    Extension(
        "rnnengine.core.kernels",
        # three translation units compiled side by side: the Cython code with the serial
        # variant, the AVX2 variant, the AVX-512 variants (kernels.h: RNN_KERNELS_PART)
        ["src/rnnengine/core/kernels.pyx", "src/rnnengine/core/kernels_avx2.c",
         "src/rnnengine/core/kernels_wide.c"],
        include_dirs=["include", numpy.get_include()],
        # The C kernels live in headers: list them so editing one rebuilds the extension.
        depends=sorted(glob.glob("include/rnnengine/*.h")),
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        # RNNENGINE_DEBUG turns on the C side's buffer-size asserts (include/rnnengine/assert.h).
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                       ("RNN_KERNELS_PART", "1")]
        + ([("RNNENGINE_DEBUG", "1")] if DEBUG else []),
    ),
    # the dense heads (dense.h) and Conv1d (conv.h), the compiled session-stream step (steps
    # core.kernels' StreamCores, dense.h heads) and the executor's runner (exec.h operators over
    # preallocated buffers): all run the ISA variant core.kernels chose (active_isa)
    *(core_user(name) for name in ("core.dense", "runtime._plan", "runtime._exec")),
    # FMAs in conv.h's AVX2/AVX-512 variants (-std=c11 otherwise keeps a * b + c unfused)
    core_user("core.conv", ["-ffp-contract=fast"]),
    Extension("rnnengine.runtime._pool", ["src/rnnengine/runtime/_pool.pyx"],
              extra_compile_args=compile_args, extra_link_args=link_args),
]



class ParallelBuildExt(build_ext):
    """Compiles the extensions side by side, one job per core, unless -j says otherwise
    (pip install runs build_ext without -j, which compiles them one after another), and the
    sources of one extension side by side too (core.kernels has three)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        compile_all = self.compiler.compile

        def compile_each(sources, *args, **kwargs):
            if len(sources) < 2:
                return compile_all(sources, *args, **kwargs)
            with ThreadPoolExecutor(len(sources)) as pool:
                parts = pool.map(lambda source: compile_all([source], *args, **kwargs),
                                 sources)
                return [obj for objects in parts for obj in objects]
        self.compiler.compile = compile_each
        super().build_extensions()


setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            nthreads=os.cpu_count() or 1),
      cmdclass={"build_ext": ParallelBuildExt})
