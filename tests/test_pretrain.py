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


def test_factored_scores_are_a_distribution_over_categories():
    logits = torch.randn(4, len(pretrain.TEXTURES) + len(pretrain.SHAPES))
    log_probs = pretrain.category_log_probs(logits)
    assert log_probs.shape == (4, len(pretrain.CATEGORIES))
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(4), atol=1e-5)
    labels = torch.tensor([0, 7, 33, 59])
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
