"""The one thing pyproject.toml cannot say: how to compile the DRR ray caster.

imaging/_raycast.c is compiled at install (`make setup`: pip install -e .), not
at run time, because igrtd runs with MemoryDenyWriteExecute=yes and no JIT can
work there (docs/imaging-2d-4d.md). It is built for any CPU of its architecture
(no -march=native: a module built on one machine must run on every CI and
treatment-room machine); its vector path is compiled for AVX2 on its own and
taken only when the CPU has it (checked at import).
"""

from setuptools import Extension, setup

FLAGS = [
    "-O3",
    # no errno from sqrt/ceil, no FP traps (none are used): lets the sample loop vectorise
    "-fno-math-errno", "-fno-trapping-math",
    # no fused multiply-add: every CPU and both paths of the kernel give the Python
    # reference's floats exactly (FMA measured 6 % faster on the vector path)
    "-ffp-contract=off",
    "-Wall", "-Wextra",
]

setup(ext_modules=[Extension("imaging._raycast", ["imaging/_raycast.c"],
                             extra_compile_args=FLAGS)])
