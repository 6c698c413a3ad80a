"""The one thing pyproject.toml cannot say: how to compile the DRR ray caster.

imaging/_raycast.c is compiled at install (`make setup`: pip install -e .), not
at run time, because igrtd runs with MemoryDenyWriteExecute=yes and no JIT can
work there (docs/imaging-2d-4d.md). It is built for the CPU it is installed on.
"""

import platform

from setuptools import Extension, setup

FLAGS = [
    "-O3", "-march=native",
    # no errno from sqrt/ceil, no FP traps (none are used): lets the sample loop vectorise
    "-fno-math-errno", "-fno-trapping-math",
    "-Wall", "-Wextra",
]
if platform.machine() in ("x86_64", "AMD64"):
    # 512-bit vectors measured slower on the project's machines (AMD EPYC): 50 vs 60 ms
    FLAGS.append("-mprefer-vector-width=256")

setup(ext_modules=[Extension("imaging._raycast", ["imaging/_raycast.c"],
                             extra_compile_args=FLAGS)])
