"""Build step of fastclr: its one compiled part, the CPU kernel of fastclr.augment.

Everything else is in pyproject.toml. The extension is optional: where no C compiler (or no
Python headers) is at hand, the install goes on without it and fastclr.augment runs its pure
PyTorch code instead (same results, slower on the CPU; `fastclr.augment.NATIVE` says which).
"""

import sys

from setuptools import Extension, setup

unix = sys.platform != "win32"
setup(ext_modules=[Extension(
    "fastclr.augment._cpu", ["fastclr/augment/_cpu.c"],
    # no errno from floorf and friends and no FP-exception traps to preserve, so compares,
    # selects and floor vectorise; not -ffast-math, which would change the float arithmetic
    extra_compile_args=["-O3", "-fno-math-errno", "-fno-trapping-math"] if unix else ["/O2"],
    optional=True,
)])
