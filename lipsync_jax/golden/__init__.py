"""Golden-fixture checker: proves our models reproduce the original PyTorch LatentSync.

Run ``python -m lipsync_jax.golden FILE [FILE ...]`` on files of ../shared/golden (or the
copies under tests/data/golden). See ``core`` for the fixture format and ``registry`` for
which module checks which kind.
"""

from lipsync_jax.golden.core import Comparison, Fixture, compare_rel, load_fixture, load_manifest, rel_l2

__all__ = ["Comparison", "Fixture", "compare_rel", "load_fixture", "load_manifest", "rel_l2"]
