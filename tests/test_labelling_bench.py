"""bench/labelling.py: the simulated annotator's click arithmetic and the verdicts it
reports (no training: each is a pure function of clicks, masks and records)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import labelling  # noqa: E402  (a script folder, not a package)

IGNORE = 255


class Masks:
    """The part of a dataset the annotator reads: ids, dense masks, the ignore index."""

    ignore_index = IGNORE

    def __init__(self, seed: int = 0, images: int = 4, size: int = 12):
        rng = np.random.default_rng(seed)
        self.image_ids = [f"img{i}" for i in range(images)]
        self.masks = [rng.integers(0, 3, (size, size)) for _ in self.image_ids]
        for mask in self.masks:
            mask[0, :] = IGNORE  # an unlabelled row: clicks there are spent for nothing

    def load_mask(self, index: int) -> np.ndarray:
        return self.masks[index]


def full_clicks(masks: Masks, per_image: int = 5, seed: int = 1) -> labelling.Clicks:
    """One click per 'instance': distinct labelled pixels per image, with their class."""
    rng = np.random.default_rng(seed)
    clicks = {}
    for image_id, mask in zip(masks.image_ids, masks.masks):
        ys, xs = np.nonzero(mask != IGNORE)
        chosen = rng.choice(len(ys), size=per_image, replace=False)
        clicks[image_id] = np.asarray([(ys[i], xs[i], mask[ys[i], xs[i]]) for i in chosen])
    return clicks


@pytest.mark.parametrize("start, full, rounds, expected", [
    (5, 20, 3, [10, 15, 20]), (5, 21, 3, [10, 16, 21]), (7, 7, 2, [7, 7]), (0, 10, 1, [10])])
def test_round_targets_step_evenly_from_the_start_to_the_full_count(start, full, rounds,
                                                                    expected):
    assert labelling.round_targets(start, full, rounds) == expected


@pytest.mark.parametrize("seed", range(5))
def test_the_start_is_a_seeded_quarter_of_the_full_clicks(seed):
    full = full_clicks(Masks(seed), seed=seed)
    start = labelling.start_clicks(full, 0.25, seed)
    assert labelling.count(start) == round(0.25 * labelling.count(full))
    assert labelling.pixels(start) <= labelling.pixels(full)
    again = labelling.start_clicks(full, 0.25, seed)
    assert labelling.pixels(again) == labelling.pixels(start)
    other = labelling.start_clicks(full, 0.25, seed + 10)
    assert labelling.pixels(other) != labelling.pixels(start)


def test_merged_adds_new_clicks_once():
    current = {"a": np.asarray([[1, 2, 0]])}
    out = labelling.merged(current, [("a", 1, 2, 0), ("a", 3, 4, 1), ("b", 0, 0, 2)])
    assert labelling.count(out) == 3
    assert sorted(map(tuple, out["a"].tolist())) == [(1, 2, 0), (3, 4, 1)]
    assert current["a"].shape == (1, 3)  # the input is left as it was


@pytest.mark.parametrize("seed", range(5))
def test_the_annotator_answers_with_the_mask_and_spends_unlabelled_clicks(seed):
    masks = Masks(seed)
    annotator = labelling.Annotator(masks)
    rng = np.random.default_rng(seed)
    asked = [(masks.image_ids[int(rng.integers(4))], int(rng.integers(12)), int(rng.integers(12)))
             for _ in range(40)]
    answered = annotator.answer(asked)
    expected = [(i, y, x, int(masks.masks[masks.image_ids.index(i)][y, x])) for i, y, x in asked
                if y != 0]
    assert answered == expected


@pytest.mark.parametrize("seed", range(5))
def test_random_pixels_are_new_distinct_and_inside_the_images(seed):
    masks = Masks(seed)
    annotator = labelling.Annotator(masks)
    current = full_clicks(masks, seed=seed)
    picked = labelling.random_pixels(current, annotator, 30, np.random.default_rng(seed))
    assert len(picked) == len(set(picked)) == 30
    assert not set(picked) & labelling.pixels(current)
    assert all(i in masks.image_ids and 0 <= y < 12 and 0 <= x < 12 for i, y, x in picked)


@pytest.mark.parametrize("budget", [1, 7, 100])
def test_unclicked_instances_come_from_the_full_set_and_stop_at_its_end(budget):
    masks = Masks()
    full = full_clicks(masks)
    current = labelling.start_clicks(full, 0.25, 0)
    picked = labelling.unclicked_instances(current, full, budget, np.random.default_rng(0))
    left = labelling.pixels(full) - labelling.pixels(current)
    assert set(picked) <= left and len(picked) == len(set(picked)) == min(budget, len(left))


def record(seed, strategy, round_, spent, miou):
    return {"seed": seed, "strategy": strategy, "round": round_, "spent": spent,
            "clicks": spent, "full_clicks": 100, "val_miou": miou}


def test_the_verdicts_follow_the_records():
    records = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        records.append(record(seed, "start", 0, 25, 0.30 + shift))
        for round_, spent in ((1, 50), (2, 75), (3, 100)):
            base = 0.30 + 0.05 * round_ + shift
            records += [record(seed, "suggest", round_, spent, base + 0.06),
                        record(seed, "random", round_, spent, base - 0.01),
                        record(seed, "instances", round_, spent, base)]
    table, verdicts = labelling.summary(records, [0, 1])
    assert verdicts["round 1: suggest beats random in every seed"] is True
    assert verdicts["round 2: suggest >= instances on the mean"] is True
    # The full set (instances, round 3) ends at 0.45 and 0.47, mean 0.46; suggest's mean
    # is 0.42 after round 1 (50 clicks) and 0.47 after round 2 (75 clicks): 75% of them.
    assert verdicts["share of the full clicks at which suggest reaches it"] == 0.75
    assert verdicts["suggest reaches the full set's mIoU with <= 70% of its clicks"] is False
    assert "25 (25%)" in table and "100 (100%)" in table
    # suggest - random is +7 points and suggest - instances +6 in both seeds: no spread,
    # so each interval is the point itself.
    round_1 = next(line for line in table.splitlines() if line.startswith("| 50 (50%)"))
    assert round_1.rstrip(" |").endswith("+7.0 [+7.0, +7.0] | +6.0 [+6.0, +6.0]")
    # A seed where random wins a round breaks "every seed".
    records.append(record(2, "suggest", 1, 50, 0.30))
    records.append(record(2, "random", 1, 50, 0.31))
    _, verdicts = labelling.summary(records, [0, 1, 2])
    assert verdicts["round 1: suggest beats random in every seed"] is False


def test_it_trains_the_demos_model_as_it_is_now_and_scores_on_the_test_split(monkeypatch):
    from pdml_ray.config import Config

    monkeypatch.setattr(sys, "argv", ["labelling.py", "--quick"])
    cfg = labelling.base_config(labelling.parse_args())
    demo = Config().model
    assert (cfg.model.backbone, cfg.model.pretrained) == (demo.backbone, demo.pretrained)
    assert cfg.data.eval_split == "test" and cfg.data.synthetic_test > 0


def test_thing_share_counts_the_clicks_on_thing_classes():
    # classes 0-1 stuff, 2-3 things: 3 of the 5 clicks are on things
    clicks = {"a": np.asarray([[0, 0, 0], [1, 1, 2], [2, 2, 3]]),
              "b": np.asarray([[3, 3, 1], [4, 4, 2]])}
    assert labelling.thing_share(clicks, {2, 3}) == 3 / 5
    assert labelling.thing_share(clicks, set()) == 0.0
    assert np.isnan(labelling.thing_share({}, {2, 3}))


def test_the_mix_table_averages_each_round_over_the_seeds():
    records = []
    for seed, share in ((0, 0.60), (1, 0.70)):
        records.append({**record(seed, "instances", 1, 50, 0.4), "thing_click_share": share,
                        "ext_accuracy": 0.8, "things_miou": 0.30 + share / 10,
                        "stuff_miou": 0.5})
        records.append({**record(seed, "random", 1, 50, 0.4), "thing_click_share": 0.25,
                        "ext_accuracy": 0.6 + seed / 10, "things_miou": 0.20,
                        "stuff_miou": 0.5})
    records.append(record(2, "random", 1, 50, 0.4))  # no mix recorded: left out
    lines = labelling.mix_table(records, [0, 1, 2]).splitlines()
    instances = next(line for line in lines if line.startswith("| instances"))
    random = next(line for line in lines if line.startswith("| random"))
    # things share 60% and 70%: 65 ± 7; things mIoU 36 and 37: 36.5 ± 0.7
    assert instances == "| instances | 1 | 50 | 65 ± 7 | 80 ± 0 | 36.5 ± 0.7 | 50.0 ± 0.0 |"
    # extension accuracy 60% and 70%: 65 ± 7
    assert random == "| random | 1 | 50 | 25 ± 0 | 65 ± 7 | 20.0 ± 0.0 | 50.0 ± 0.0 |"
