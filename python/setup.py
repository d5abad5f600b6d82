"""Builds the kldiv package: the kldiv library it loads, and the small C extension that calls it.

The library comes from $KLDIV_LIBRARY (a path to libkldiv.so or libkldiv_aot.so),
else from the build next to this folder (../build/runtime/libkldiv.so). The
extension (kldiv/_ext.c) uses CPython's stable ABI and includes kldiv.h
($KLDIV_INCLUDE, else ../runtime/include), never a torch header: one build
serves every Python from 3.10 and every torch.
"""
import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def kldiv_library():
    path = Path(os.environ.get("KLDIV_LIBRARY") or HERE.parent / "build/runtime/libkldiv.so")
    if not path.is_file():
        raise SystemExit(f"kldiv: no library at {path}: build kldiv first (scripts/build.sh), "
                         "or set KLDIV_LIBRARY to a libkldiv.so")
    return path


def kldiv_include():
    path = Path(os.environ.get("KLDIV_INCLUDE") or HERE.parent / "runtime/include")
    if not (path / "kldiv/kldiv.h").is_file():
        raise SystemExit(f"kldiv: no kldiv/kldiv.h under {path}: set KLDIV_INCLUDE to kldiv's include folder")
    return str(path)


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "kldiv" / "libkldiv.so"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kldiv_library(), target)
        os.chmod(target, 0o755)


# _ext.c defines Py_LIMITED_API itself.
extension = Extension("kldiv._ext", ["kldiv/_ext.c"], include_dirs=[kldiv_include()], py_limited_api=True,
                      extra_compile_args=["-O2", "-std=c11"])

setup(cmdclass={"build_py": BuildWithLibrary}, ext_modules=[extension],
      options={"bdist_wheel": {"py_limited_api": "cp310"}})
