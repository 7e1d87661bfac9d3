"""bench/quality.py reuses a finished run whose settings are the same: a setting left to a
default counts as the value it resolves to, so the same training is found however its
settings were spelled, and a default that changes cannot pass an old run off as new."""

from __future__ import annotations

import sys

from pdml_ray.config import Config
from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import quality  # noqa: E402  (a script folder, not a package)


def recipe(**overrides) -> Config:
    return Config().replace(**{"train.supervision": "point+pdml+ext", "train.epochs": 12,
                               **overrides})


def test_an_unset_extension_schedule_keys_as_the_values_it_resolves_to(tmp_path):
    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"stand-in weights")
    pretrained = recipe(**{"model.pretrained": str(weights)})
    spelled_out = pretrained.replace(**{"extension.weight": 16.0})
    assert quality.run_key(pretrained) == quality.run_key(spelled_out)
    # The same start said as an epoch is the same run; another weight is not.
    assert quality.run_key(pretrained) == quality.run_key(
        pretrained.replace(**{"extension.start_epoch": 6}))
    assert quality.run_key(pretrained) != quality.run_key(
        pretrained.replace(**{"extension.weight": 4.0}))
    # From random init an unset weight resolves to 4.
    scratch = recipe(**{"model.pretrained": None})
    assert quality.run_key(scratch) == quality.run_key(
        scratch.replace(**{"extension.weight": 4.0}))
    assert quality.run_key(scratch) != quality.run_key(
        scratch.replace(**{"extension.weight": 16.0}))


def test_a_sweep_trial_is_keyed_by_its_own_settings_not_its_tables_base():
    base = recipe().to_dict()  # a table's base config: the default recipe
    trial = {"row": "m=20, alpha=0.8", "seed": 0, "train.supervision": "point+pdml",
             "loss.margin": 20.0, "loss.alpha": 0.8}
    rebuilt = quality.record_config(base, trial)
    assert rebuilt.train.supervision == "point+pdml"
    assert quality.run_key(rebuilt) != quality.run_key(recipe())
    assert quality.run_key(rebuilt) == quality.run_key(
        recipe(**{"train.supervision": "point+pdml"}))


def test_a_record_is_reused_only_by_the_code_revision_that_made_it():
    # A record is reused only by the code revision that made it: one without a revision
    # (before 2) is retrained, with PDML's head or without it.
    old = {"row": "point+pdml", "seed": 0, "val_miou": 0.5}
    new = {**old, "code_revision": quality.CODE_REVISION}
    pdml = recipe(**{"train.supervision": "point+pdml"})
    for cfg in (pdml, recipe(**{"train.supervision": "point"}),
                pdml.replace(**{"model.embedding": "features"})):
        assert not quality.reusable(old, cfg) and quality.reusable(new, cfg)
    assert not quality.reusable({**old, "code_revision": quality.CODE_REVISION + 1}, pdml)
