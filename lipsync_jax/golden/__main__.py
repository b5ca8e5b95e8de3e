"""``python -m lipsync_jax.golden FILE [FILE ...]``: check our implementation against fixtures.

Prints one line per compared output, ``kind name rel_err tolerance PASS|FAIL`` (``MISSING``
when the kind is not implemented yet, ``ERROR`` when the check itself failed), and exits 0
only if everything passed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from lipsync_jax.golden.core import Comparison, load_fixture, load_manifest
from lipsync_jax.golden.registry import CHECK_MODULES, manifest_kind


def _check_module(kind: str):
    """The check module for ``kind``, or ``None`` if it is not implemented (yet)."""
    module_name = CHECK_MODULES.get(kind)
    if module_name is None:
        return None
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only "the check module itself is absent" means MISSING; a broken import inside it is an error.
        if e.name and module_name.startswith(e.name):
            return None
        raise


def check_file(path: str) -> list[Comparison]:
    name = os.path.basename(path)
    if not os.path.isfile(path):
        return [Comparison("?", name, None, None, False, status="ERROR", detail="no such file")]
    if path.endswith(".json"):
        manifest = load_manifest(path)
        kind = manifest_kind(manifest["name"]) or "?"
        func_name = "check_manifest"
        target = manifest
    elif path.endswith(".npz"):
        target = load_fixture(path)
        kind = target.kind
        func_name = "check_fixture"
    else:
        return []  # READMEs and other files in the golden folder are not fixtures
    module = _check_module(kind)
    func = getattr(module, func_name, None) if module is not None else None
    if func is None:
        return [Comparison(kind, name, None, None, False, status="MISSING")]
    return func(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipsync_jax.golden", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="golden .npz fixtures and/or manifest_*.json files")
    args = parser.parse_args(argv)
    all_ok = True
    for path in args.files:
        try:
            results = check_file(path)
        except Exception as e:  # report, keep checking the other files
            traceback.print_exc(file=sys.stderr)
            results = [Comparison("?", os.path.basename(path), None, None, False, status="ERROR",
                                  detail=f"{type(e).__name__}: {e}")]
        for result in results:
            print(result.line(), flush=True)
            all_ok &= result.passed
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
