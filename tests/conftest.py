"""Shared test fixtures: paths to the bundled golden fixtures and media (copied from
../shared so a plain clone can run the tests)."""

import os

import pytest

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
GOLDEN_DIR = os.path.join(DATA_DIR, "golden")
ASSETS_DIR = os.path.join(DATA_DIR, "assets")


def golden_path(name: str) -> str:
    return os.path.join(GOLDEN_DIR, name)


def asset_path(name: str) -> str:
    return os.path.join(ASSETS_DIR, name)


@pytest.fixture
def golden():
    return golden_path


@pytest.fixture
def asset():
    return asset_path
