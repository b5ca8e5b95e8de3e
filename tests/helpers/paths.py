"""Paths of the repository and of the bundled golden fixtures and media (tests/data, copied from
../shared so a plain clone can run the tests)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(ROOT, "tests", "data")
GOLDEN_DIR = os.path.join(DATA_DIR, "golden")
ASSETS_DIR = os.path.join(DATA_DIR, "assets")
TINY_CONFIG = os.path.join(ROOT, "configs", "unet", "tiny.py")

# the two-person clip built from the demos (the ``demo_clips`` fixture)
TWO_PEOPLE_SECONDS = 2
TWO_PEOPLE_HALF_WIDTH, TWO_PEOPLE_HEIGHT = 240, 426  # each demo scaled from 1080x1920


def golden_path(name: str) -> str:
    return os.path.join(GOLDEN_DIR, name)


def asset_path(name: str) -> str:
    return os.path.join(ASSETS_DIR, name)
