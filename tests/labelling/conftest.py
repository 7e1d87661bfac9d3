"""Synthetic scenes shared by the labelling tests (read-only: copy before changing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdml_ray.data import generate_scenes

SCENE_SIZE = 32


@pytest.fixture(scope="session")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train and 2 val synthetic scenes of 32x32 pixels."""
    root = tmp_path_factory.mktemp("labelling_scenes") / "scenes"
    generate_scenes(root, train=4, val=2, size=SCENE_SIZE, seed=5)
    return root
