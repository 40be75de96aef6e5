"""Build the compiled twins of the hot modules with Cython and the machine's gcc (scripts/setup).

Each pure-Python module listed in shared/compiled.py TWINS is copied to .cache/cython under its
twin's name with ``SOURCE_SHA256`` (the digest of the source) appended, and compiled there in
Cython's pure-Python mode: the same code, typed only where ``scripts/cython/<twin>.pxd`` says
(Cython reads a .pxd beside the .py it compiles). Type annotations in the source are not used
as C types (``annotation_typing=False``): a ``float`` hint would turn an int timestamp into a
float and change the output. The extension lands beside the pure module
(``services/decoder/_fastpath_c.cpython-*.so``); shared/compiled.py loads it only when its digest
matches the source on disk.

A failure is not an error: the pure modules work on their own, so this prints a warning and
exits 0 (``--strict`` exits 1 instead). Usage:

    .venv/bin/python -m scripts.build_compiled [--strict] [--clean]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".cache" / "cython"
PXD = ROOT / "scripts" / "cython"

sys.path.insert(0, str(ROOT))
from shared.compiled import HANDWRITTEN, PACKED_LAYOUT, TWINS, source_digest  # noqa: E402

DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": False,
    "embedsignature": False,
}


def artefacts() -> list[Path]:
    """The built extension files in the source tree."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return [ROOT / (twin.replace(".", "/") + suffix) for twin in TWINS.values()]


def stage_sources() -> list[tuple[str, Path]]:
    """Copy each pure module to the build tree under its twin's name, stamped with its digest."""
    staged = []
    layout = BUILD / PACKED_LAYOUT.name  # cimported by the hand-written twins (include path BUILD)
    BUILD.mkdir(parents=True, exist_ok=True)
    if not layout.exists() or layout.read_bytes() != PACKED_LAYOUT.read_bytes():
        layout.write_bytes(PACKED_LAYOUT.read_bytes())
    for pure, twin in TWINS.items():
        src = ROOT / (pure.replace(".", "/") + ".py")
        dst = BUILD / (twin.replace(".", "/") + ".py")
        dst.parent.mkdir(parents=True, exist_ok=True)
        handwritten = HANDWRITTEN.get(pure)
        stamp = f'\n\nSOURCE_SHA256 = "{source_digest(src, handwritten)}"  # stamped by scripts/build_compiled.py\n'
        if handwritten is not None:  # a .pyx of its own, compiled as it is
            dst = dst.with_suffix(".pyx")
            text = handwritten.read_text() + stamp
            if not dst.exists() or dst.read_text() != text:
                dst.write_text(text)
            staged.append((twin, dst))
            continue
        text = src.read_text() + stamp
        if not dst.exists() or dst.read_text() != text:
            dst.write_text(text)
        pxd = PXD / (twin.rsplit(".", 1)[1] + ".pxd")
        staged_pxd = dst.with_suffix(".pxd")
        wanted = pxd.read_text() if pxd.exists() else None
        have = staged_pxd.read_text() if staged_pxd.exists() else None
        if wanted != have:  # a new or changed .pxd: the twin must be compiled again
            if wanted is None:
                staged_pxd.unlink()
            else:
                staged_pxd.write_text(wanted)
            dst.touch()
        staged.append((twin, dst))
    return staged


def build() -> None:
    from Cython.Build import cythonize
    from setuptools import Extension
    from setuptools.dist import Distribution

    staged = stage_sources()
    exts = [
        Extension(
            twin,
            [str(path)],
            # -O3 (the interpreter's own level): the flow table's per-record loop and its
            # methods took 5-7% less CPU than at -O2 on sv-merged's records in one process
            # (0.134 -> 0.125 s, medians of 5 alternations); the decoder's decode_packed did not move. No
            # -march=native: fused multiply-adds would change floats against the pure reference.
            extra_compile_args=["-O3", "-g0", "-Wno-unused-function"],
            extra_link_args=["-s"],
        )
        for twin, path in staged
    ]
    modules = cythonize(
        exts,
        compiler_directives=DIRECTIVES,
        quiet=True,
        build_dir=str(BUILD / "c"),
        include_path=[str(BUILD)],
    )
    dist = Distribution({"name": "pktscope-compiled", "ext_modules": modules})
    cmd = dist.get_command_obj("build_ext")
    cmd.inplace = True
    cmd.build_temp = str(BUILD / "tmp")
    cmd.ensure_finalized()
    cmd.run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/build_compiled", description=__doc__)
    ap.add_argument("--strict", action="store_true", help="exit 1 when the build fails")
    ap.add_argument("--clean", action="store_true", help="remove the built modules (pure Python only)")
    args = ap.parse_args(argv)
    if args.clean:
        for path in artefacts():
            path.unlink(missing_ok=True)
        shutil.rmtree(BUILD, ignore_errors=True)
        return 0
    import os

    os.chdir(ROOT)  # build_ext --inplace puts each extension beside its package's sources
    try:
        build()
    except BaseException as exc:  # a compiler error raises SystemExit/CompileError: never fatal
        if isinstance(exc, KeyboardInterrupt):
            raise
        for path in artefacts():
            path.unlink(missing_ok=True)  # no half-built set: a twin either matches or is absent
        print(
            f"build_compiled: warning: compiling the hot modules failed ({exc!r}); "
            "pktscope runs them as pure Python (slower, same output)",
            file=sys.stderr,
        )
        return 1 if args.strict else 0
    missing = [p.name for p in artefacts() if not p.exists()]
    if missing:
        print(
            f"build_compiled: warning: not built: {', '.join(missing)}; those run as pure Python",
            file=sys.stderr,
        )
        return 1 if args.strict else 0
    print(
        "build_compiled: compiled twins built and up to date: " + ", ".join(TWINS.values()), file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
