#!/usr/bin/env python3
"""Runs every example in README.md and docs/*.md, so that documentation cannot rot.

Each fenced block marked python, c or cpp is a complete program:
- python blocks run in a fresh process of the given Python (the torch 2.x
  environment), from the checkout's root;
- c and cpp blocks are compiled with gcc / g++ -std=c++17 against the
  library's headers, linked with the build's libkldiv, and run.
sh blocks and others are commands or text, not run here. A block that fails
prints its file, line, the program and its output; the run exits 1.

    tests/doc_examples.py --root . --build build --python .venv/bin/python [--only FILE]
"""
import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\s*$")
RUN = {"python", "c", "cpp"}


def blocks(path):
    """(language, first line number, code) of each fenced block in a Markdown file."""
    found, language, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if language is None and match:
            language, start, lines = match.group(1), number + 1, []
        elif language is not None and line.strip() == "```":
            found.append((language, start, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    if language is not None:
        raise SystemExit(f"{path}:{start}: a code block is not closed")
    return found


def run_python(code, args, scratch):
    script = scratch / "example.py"
    script.write_text(code)
    return subprocess.run([args.python, str(script)], cwd=args.root, capture_output=True, text=True,
                          timeout=600)


def run_native(code, language, args, scratch):
    source = scratch / ("example.c" if language == "c" else "example.cpp")
    source.write_text(code)
    binary = scratch / "example"
    library = Path(args.build).resolve() / "runtime"
    compiler = ["gcc", "-std=c11"] if language == "c" else ["g++", "-std=c++17"]
    build = subprocess.run(compiler + ["-O1", "-Wall", "-Werror", str(source), "-o", str(binary),
                                       f"-I{Path(args.root).resolve() / 'runtime/include'}",
                                       f"-I{Path(args.root).resolve() / 'dsl/include'}",
                                       f"-L{library}", "-lkldiv", f"-Wl,-rpath,{library}", "-lm"],
                           capture_output=True, text=True)
    if build.returncode != 0:
        return build
    return subprocess.run([str(binary)], cwd=args.root, capture_output=True, text=True, timeout=600)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="the checkout (README.md and docs/)")
    parser.add_argument("--build", default="build", help="the build directory (its runtime/libkldiv.so)")
    parser.add_argument("--python", default=".venv/bin/python", help="the Python that runs python blocks")
    parser.add_argument("--only", help="one Markdown file")
    args = parser.parse_args()
    root = Path(args.root)
    files = [Path(args.only)] if args.only else [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    counts, failures = {language: 0 for language in RUN}, []
    with tempfile.TemporaryDirectory(prefix="kldiv-doc-") as directory:
        scratch = Path(directory)
        for path in files:
            for language, line, code in blocks(path):
                if language not in RUN:
                    continue
                counts[language] += 1
                result = run_python(code, args, scratch) if language == "python" else \
                    run_native(code, language, args, scratch)
                where = f"{path.relative_to(root) if path.is_relative_to(root) else path}:{line}"
                status = "ok" if result.returncode == 0 else f"FAILED ({result.returncode})"
                print(f"{where:32s} {language:6s} {status}", flush=True)
                if result.returncode != 0:
                    failures.append(f"--- {where} ({language})\n{code}--- output\n{result.stdout}{result.stderr}")
    print(f"{sum(counts.values())} examples run: " + ", ".join(f"{n} {language}" for language, n in counts.items()))
    if failures:
        print("\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
