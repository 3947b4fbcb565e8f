"""The compiled counting kernel; everything else about the build is in pyproject.toml.

The kernel is optional: where it does not compile (no C compiler, say), setuptools warns and the
install goes on without it, and export_client counts with its pure-Python core instead.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        # gcc and clang: C11, and every warning worth having (CPython's flags bring -Wall).
        if self.compiler.compiler_type == "unix":
            for extension in self.extensions:
                extension.extra_compile_args += ["-std=c11", "-Wall", "-Wextra"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension("export_client._kernel", ["src/export_client/_kernel.c"], optional=True)
    ],
    cmdclass={"build_ext": BuildExt},
)
