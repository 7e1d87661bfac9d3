"""bench/pretrain.py: the synthetic-ImageNet generator and the weights it writes, loaded by
``build_model`` as ``model.pretrained`` loads them (a tiny run: seconds, not minutes)."""

from __future__ import annotations

import ast
import sys

import pytest
import torch

from pdml_ray.models import build_model
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import pretrain  # noqa: E402  (a script folder, not a package)

TINY = ["--per-class", "2", "--val-per-class", "1", "--size", "32", "--epochs", "1",
        "--batch-size", "16", "--threads", "1"]


def test_at_least_50_categories_each_a_texture_and_a_shape():
    assert len(pretrain.CATEGORIES) == len(set(pretrain.CATEGORIES)) >= 50
    assert len(pretrain.CATEGORIES) == len(pretrain.TEXTURES) * len(pretrain.SHAPES)


def test_generation_is_deterministic_and_categories_differ():
    first, labels = pretrain.make_split("val", 2, 32, seed=5)
    again, _ = pretrain.make_split("val", 2, 32, seed=5)
    other, _ = pretrain.make_split("val", 2, 32, seed=6)
    assert first.shape == (2 * len(pretrain.CATEGORIES), 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert labels.tolist() == [c for c in range(len(pretrain.CATEGORIES)) for _ in range(2)]
    # A category's first images do not depend on how many are made.
    more, _ = pretrain.make_split("val", 3, 32, seed=5)
    assert torch.equal(more[0], first[0]) and torch.equal(more[1], first[1])


def test_generator_shares_no_code_with_the_benchmark_scenes():
    tree = ast.parse((REPO / "bench" / "pretrain.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name and name.startswith("pdml_ray") for name in imported)


# -- the stand-in shares no look with the scenes --------------------------------------------
# Each pattern or shape family under every name the generators give it: two generators
# draw the same family when their names map to one kind here (the equations behind each
# name are in bench/pretrain.py, pdml_ray/data/synthetic.py and synthetic_v2.py).
KIND = {
    # textures
    "grating": "stripes", "fine-grating": "stripes", "stripes": "stripes", "cone": "stripes",
    "speckle": "grain", "grain": "grain", "ground": "grain",
    "dots": "dots", "kite": "dots",
    "rings": "rings", "ball": "rings",
    "checker": "checker", "crate": "checker",
    "blobs": "smooth", "smooth": "smooth", "sky": "smooth",
    "waves": "ripples", "ripples": "ripples", "water": "ripples",
    "wall": "bricks", "brick-photo": "bricks",
    "gravel-photo": "photo", "grass-photo": "photo", "photo-crop": "photo",
    "spokes": "spokes", "plaid": "plaid", "zigzag": "zigzag", "hatching": "hatching",
    "spiral": "spiral", "cells": "cells", "scales": "scales", "herringbone": "herringbone",
    "hex-lattice": "hex-lattice", "truchet": "truchet",
    # shapes
    "disk": "round", "flat-ellipse": "round", "blob": "round", "ellipse": "round",
    "square": "box", "rectangle": "box", "triangle": "triangle", "rhombus": "rhombus",
    "ring": "ring", "cross": "cross", "star": "star", "crescent": "crescent",
    "chevron": "chevron",
}
# Version 1 dispatches on class names (pdml_ray/data/synthetic.py: _texture, _thing_shape).
V1_TEXTURES = ("sky", "ground", "water", "wall", "ball", "crate", "cone", "kite")
V1_SHAPES = ("ellipse", "square", "triangle", "rhombus")  # ball, crate, cone, kite


def scene_kinds() -> tuple[set[str], set[str]]:
    from pdml_ray.data import synthetic_v2

    textures = {KIND[name] for name in (*V1_TEXTURES, *synthetic_v2.TEXTURE_FAMILIES)}
    shapes = {KIND[name] for name in (*V1_SHAPES, *synthetic_v2.THING_SHAPES)}
    return textures, shapes


def shared_with_scenes(recipe: int) -> set[str]:
    textures, shapes = scene_kinds()
    return ({KIND[t] for t in pretrain.TEXTURES_BY_RECIPE[recipe]} & textures
            | {KIND[s] for s in pretrain.SHAPES_BY_RECIPE[recipe]} & shapes)


def test_the_stand_in_draws_no_texture_or_shape_of_a_scene_class():
    assert pretrain.RECIPE == 2
    assert shared_with_scenes(2) == set()
    # The check sees what recipe 1 shared: speckle was ground, dots the kite, ...
    assert shared_with_scenes(1) == {"stripes", "grain", "dots", "rings", "checker", "smooth",
                                     "round", "box", "triangle"}


def test_every_declared_family_is_drawn_and_nothing_else():
    """The declared names are what the generators dispatch on: each draws, an undeclared
    name is refused, so the disjointness check above cannot be passed by a name alone."""
    import numpy as np

    from pdml_ray.data import synthetic_v2

    rng = np.random.default_rng(0)
    u, v = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32))
    for name in pretrain.TEXTURES:
        pattern = pretrain.texture(name, u, v, rng)
        assert pattern.shape == u.shape and pattern.std() > 0.05, name
    for name in pretrain.SHAPES:
        assert 0.05 < pretrain.shape_mask(name, u, v).mean() < 0.95, name
    y, x = np.mgrid[0:32, 0:32].astype(float)
    for name in synthetic_v2.TEXTURE_FAMILIES:
        assert synthetic_v2.texture(name, rng, y, x, x - 16, y - 16).std() > 0.01, name
    for name in synthetic_v2.THING_SHAPES:
        assert synthetic_v2.thing_mask(name, x - 16, y - 16, 8.0, 0.9, rng).any(), name
    with pytest.raises(ValueError, match="unknown texture"):
        pretrain.texture("stripes", u, v, rng)
    with pytest.raises(ValueError, match="unknown shape"):
        pretrain.shape_mask("disc", u, v)
    with pytest.raises(ValueError, match="unknown texture family"):
        synthetic_v2.texture("spokes", rng, y, x, x, y)
    with pytest.raises(ValueError, match="unknown thing shape"):
        synthetic_v2.thing_mask("star", x, y, 8.0, 0.9, rng)


def test_factored_scores_are_a_distribution_over_categories():
    logits = torch.randn(4, len(pretrain.TEXTURES) + len(pretrain.SHAPES))
    log_probs = pretrain.category_log_probs(logits)
    assert log_probs.shape == (4, len(pretrain.CATEGORIES))
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(4), atol=1e-5)
    labels = torch.tensor([0, 7, 33, 49])
    # The loss of the factored head is the category's negative log-likelihood
    # (up to label smoothing, switched off here by comparing unsmoothed terms).
    texture, shape = labels // len(pretrain.SHAPES), labels % len(pretrain.SHAPES)
    want = -log_probs[torch.arange(4), labels]
    got = (torch.nn.functional.cross_entropy(logits[:, :len(pretrain.TEXTURES)], texture,
                                             reduction="none")
           + torch.nn.functional.cross_entropy(logits[:, len(pretrain.TEXTURES):], shape,
                                               reduction="none"))
    assert torch.allclose(got, want, atol=1e-5)


def test_written_weights_load_into_build_model_and_are_cached(tmp_path, capsys):
    path = pretrain.main(TINY + ["--out-dir", str(tmp_path)])
    assert path.is_file() and path.parent == tmp_path
    assert not list(tmp_path.glob("*.partial"))  # written under its name only when complete
    state = torch.load(path, weights_only=True)
    model = build_model(num_classes=8, backbone="resnet18", pretrained=str(path))
    backbone = model.backbone.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer3.0.conv1.weight"):
        assert torch.equal(backbone[key], state[key])
    # Trained weights differ from a fresh init: the file holds what training made.
    assert not torch.equal(state["layer1.0.conv1.weight"],
                           pretrain.build_classifier("resnet18").state_dict()["layer1.0.conv1.weight"])
    mtime = path.stat().st_mtime_ns
    capsys.readouterr()
    assert pretrain.main(TINY + ["--out-dir", str(tmp_path)]) == path
    assert "cached" in capsys.readouterr().out and path.stat().st_mtime_ns == mtime
    # Another setting is another file, never the cached one.
    assert pretrain.cache_path(pretrain.parse_args(TINY + ["--out-dir", str(tmp_path),
                                                           "--lr", "1e-3"])) != path


@pytest.mark.parametrize("argv, message", [(["--epochs", "0"], "--epochs must be >= 1"),
                                           (["--size", "16"], "--size must be >= 32")])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        pretrain.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_weights_file_of_another_depth_is_refused(tmp_path):
    path = tmp_path / "r34.pt"
    torch.save(pretrain.build_classifier("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match="does not match a resnet18 backbone"):
        build_model(num_classes=8, backbone="resnet18", pretrained=str(path))
