"""Puts the kldiv library into the package, so that it loads the one it was installed with.

The library comes from $KLDIV_LIBRARY (a path to libkldiv.so or libkldiv_aot.so),
else from the build next to this folder (../build/runtime/libkldiv.so).
"""
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution


def kldiv_library():
    path = Path(os.environ.get("KLDIV_LIBRARY") or Path(__file__).resolve().parent.parent / "build/runtime/libkldiv.so")
    if not path.is_file():
        raise SystemExit(f"kldiv: no library at {path}: build kldiv first (scripts/build.sh), "
                         "or set KLDIV_LIBRARY to a libkldiv.so")
    return path


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "kldiv" / "libkldiv.so"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kldiv_library(), target)
        os.chmod(target, 0o755)


class BinaryDistribution(Distribution):
    """The package holds a native library: its wheel is for this platform only."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithLibrary}, distclass=BinaryDistribution)
