"""bench/quality.py: the calibration gate's verdicts and the --split/--scenes/--regime
plumbing (no training: the verdicts are a pure function of the records)."""

from __future__ import annotations

import argparse
import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import quality  # noqa: E402  (a script folder, not a package)

RECIPE = quality.PAPER_RECIPE_ROW


def records(rows: dict[str, list[float]], ext: dict[str, list[float]] | None = None) -> list[dict]:
    out = []
    for row, scores in rows.items():
        for seed, score in enumerate(scores):
            record = {"row": row, "seed": seed, "val_miou": score}
            if ext and row in ext:
                record["ext_accuracy"] = ext[row][seed]
            out.append(record)
    return out


def verdicts(recs) -> dict[str, str]:
    lines, _ = quality.calibration_verdicts(recs)
    return {line[0]: line[-1] for line in lines}


def test_the_papers_orderings_pass_the_gate():
    rows = {"full": [0.60, 0.62, 0.61], "point": [0.40, 0.42, 0.41],
            "score (0.7)": [0.30, 0.33, 0.31], "region": [0.43, 0.46, 0.44],
            RECIPE: [0.44, 0.47, 0.45]}
    ext = {"score (0.7)": [0.55, 0.58, 0.56], "region": [0.97, 0.98, 0.97]}
    lines, passed = quality.calibration_verdicts(records(rows, ext))
    assert passed and all(line[-1] == "held" for line in lines)


def test_score_above_point_is_contradicted_and_fails_the_gate():
    rows = {"full": [0.60, 0.62, 0.61], "point": [0.40, 0.42, 0.41],
            "score (0.7)": [0.45, 0.47, 0.46], "region": [0.43, 0.46, 0.44],
            RECIPE: [0.44, 0.47, 0.45]}
    ext = {"score (0.7)": [0.85, 0.86, 0.84], "region": [0.97, 0.98, 0.97]}
    got = verdicts(records(rows, ext))
    assert got["Table 5: score alone below point CE"] == "contradicted"
    # 12 points apart is not "far below" (>= 20): not held, though above 0.
    assert got["Table 5: score's extension accuracy far (>= 20 points) below region's"] == "not held"
    assert not quality.calibration_verdicts(records(rows, ext))[1]


def test_an_interval_across_zero_is_not_held_and_a_missing_row_is_not_run():
    rows = {"point": [0.40, 0.42, 0.41], "region": [0.41, 0.41, 0.42]}  # +0.3, -1.0, +1.0
    got = verdicts(records(rows))
    assert got["Table 5: region above point CE"] == "not held"
    assert got["Table 3: point+pdml+ext < full"] == "not run"
    # "not below" holds while the interval reaches 0 or above.
    tie = {"region": [0.44, 0.46, 0.45], RECIPE: [0.45, 0.45, 0.45]}
    assert verdicts(records(tie))["Table 5: score+region >= region"] == "held"


@pytest.mark.parametrize("split", ["val", "test"])
def test_split_scenes_and_regime_reach_the_config_and_the_file_name(split, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["quality.py", "--table", "calibration", "--regime",
                                      "imagenet", "--scenes", "v2", "--split", split])
    args = quality.parse_args()
    cfg = quality.base_config(args)
    assert cfg.data.eval_split == split and cfg.data.dataset == "synthetic_v2"
    assert (cfg.model.backbone, cfg.model.pretrained) == ("efficientnet_lite0", "imagenet")
    assert "synthetic-v2-200-50-50-96px-seed0-test1" in cfg.data.root
    from pdml_ray.models.efficientnet import LITE0_SHA256
    assert quality.weights_digest(cfg) == LITE0_SHA256
    # The split is a setting of the run: the same run on val and on test are two runs.
    other = cfg.replace(**{"data.eval_split": "val" if split == "test" else "test"})
    assert quality.run_key(cfg) != quality.run_key(other)


def test_a_record_says_which_split_it_ran_on(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["quality.py", "--table", "calibration", "--regime",
                                      "imagenet", "--scenes", "v2", "--split", "test",
                                      "--seeds", "10"])
    args = quality.parse_args()
    cfg = quality.base_config(args)
    trained = []

    def fake_train(run_cfg):  # stands in for a Ray run: what the table does with its result
        trained.append(run_cfg)
        return {"val_miou": 0.5, "mlflow_run_id": f"run{len(trained)}"}

    monkeypatch.setattr(quality, "train_once", fake_train)
    monkeypatch.setattr(quality, "finished_runs", lambda cfg=None: {})
    saved = []
    rows = quality.table_rows(args)[:2]
    recs = quality.run_rows(cfg, rows, args, [], saved.append)
    assert [r["split"] for r in recs] == ["test", "test"]
    assert all(c.data.eval_split == "test" and c.train.seed == 10 for c in trained)
    assert recs[0]["config"]["data"]["eval_split"] == "test"
    # A rerun skips what is recorded: resumable.
    again = quality.run_rows(cfg, rows, args, recs, saved.append)
    assert len(trained) == 2 and again == recs


def test_demo_table_times_each_start_to_the_lower_final_score():
    slow, fast = quality.DEMO_ROWS
    recs = [{"row": slow, "seed": 0, "val_miou": 0.45,
             "curve_seconds": [(60, 0.2), (120, 0.4), (300, 0.45)]},
            {"row": fast, "seed": 0, "val_miou": 0.55,
             "curve_seconds": [(60, 0.35), (120, 0.5), (280, 0.55)]}]
    lines = [line.split(" | ") for line in quality.render_demo(recs).splitlines()[2:]]
    # target 45.0: ResNet-18 reaches it at its end (300 s), Lite0 at 120 s; when the
    # quicker run ended (280 s) ResNet-18 stood at 40.0.
    assert [line[4] for line in lines] == ["300", "120"]
    assert [line[5].rstrip(" |") for line in lines] == ["40.0", "55.0"]


def test_rows_split_between_labels_not_inside_their_parentheses():
    text = "point, point+pdml (features, 0.1),point+pdml (projection, 0.02),full"
    assert quality.row_labels(text) == ["point", "point+pdml (features, 0.1)",
                                        "point+pdml (projection, 0.02)", "full"]
    args = argparse.Namespace(table="pdml")
    labels = {row.label for row in quality.table_rows(args)}
    assert set(quality.row_labels(",".join(sorted(labels)))) == labels


def calibration_args(monkeypatch, *extra: str) -> argparse.Namespace:
    monkeypatch.setattr(sys, "argv", ["quality.py", "--table", "calibration", "--regime",
                                      "imagenet", "--scenes", "v2", "--split", "test",
                                      "--seeds", "10", *extra])
    return quality.parse_args()


@pytest.mark.parametrize("choice, settings", [
    ("none", {"train.supervision": "point+ext"}),
    ("Features:0.020", {"model.embedding": "features", "loss.pdml_weight": 0.02}),
    ("projection:0.1", {"model.embedding": "projection", "loss.pdml_weight": 0.1})])
def test_ext_pdml_sets_the_extension_rows_pdml_and_keeps_point_and_full(monkeypatch, choice,
                                                                         settings):
    first = calibration_args(monkeypatch)
    chosen = calibration_args(monkeypatch, "--ext-pdml", choice)
    cfg = quality.base_config(chosen)
    rows = {row.label: row for row in quality.table_rows(chosen)}
    for label in ("score (0.7)", "region", quality.PAPER_RECIPE_ROW):
        run = cfg.replace(**rows[label].overrides)
        assert run.uses_extension and run.uses_pdml == (choice != "none")
        assert {k: run.flat()[k] for k in settings} == settings
        assert (run.extension.method, run.extension.threshold) == (
            rows[label].overrides["extension.method"],
            rows[label].overrides["extension.threshold"])
    # point and full do not read the PDML term: the first gate's runs are the same runs.
    before = {row.label: row for row in quality.table_rows(first)}
    for label in ("point", "full"):
        assert (quality.run_key(cfg.replace(**rows[label].overrides))
                == quality.run_key(cfg.replace(**before[label].overrides)))
    recipe = quality.PAPER_RECIPE_ROW
    assert (quality.run_key(cfg.replace(**rows[recipe].overrides))
            != quality.run_key(cfg.replace(**before[recipe].overrides)))


def test_ext_pdml_none_names_the_rows_as_what_they_train(monkeypatch):
    args = calibration_args(monkeypatch, "--ext-pdml", "none")
    assert quality.shown_label(args, quality.PAPER_RECIPE_ROW) == "score+region (0.7): point+ext"
    assert (quality.shown_label(args, "Table 3: point < point+pdml+ext")
            == "Table 3: point < point+ext")
    default = calibration_args(monkeypatch)
    assert quality.shown_label(default, quality.PAPER_RECIPE_ROW) == quality.PAPER_RECIPE_ROW
    # Its own file: the first gate's table is not rewritten by the second.
    assert quality.results_name(default) == "quality-tablecalibration-imagenet-v2-test"
    assert quality.results_name(args) == "quality-tablecalibration-imagenet-v2-test-ext-none"
    chosen = calibration_args(monkeypatch, "--ext-pdml", "projection:0.02")
    assert quality.results_name(chosen).endswith("-test-ext-projection0.02")


@pytest.mark.parametrize("bad", ["feature:0.1", "features:0", "features:abc", "projection"])
def test_ext_pdml_rejects_a_bad_choice_in_one_line(monkeypatch, capsys, bad):
    with pytest.raises(SystemExit):
        calibration_args(monkeypatch, "--ext-pdml", bad)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--ext-pdml" in err and repr(bad) in err and "none or EMBEDDING:WEIGHT" in err


def test_the_pdml_table_shares_the_gap_only_when_full_ran():
    args = argparse.Namespace(table="pdml")
    rows = [row for row in quality.table_rows(args) if row.label != "full"]
    arm = "point+pdml (features, 0.02)"
    recs = records({"point": [0.40, 0.42, 0.41], arm: [0.41, 0.44, 0.42]})
    line = next(l for l in quality.render(args, rows, recs).splitlines() if arm in l)
    assert "+1.3 [" in line and "nan" not in line and "| — |" in line
    with_full = recs + records({"full": [0.50, 0.52, 0.51]})
    line = next(l for l in quality.render(args, rows, with_full).splitlines() if arm in l)
    assert "+13% [" in line  # 1.33 points of a 10-point gap


@pytest.mark.parametrize("regime, table, model", [
    ("random", "3", ("resnet18", None)),
    ("random", "demo", ("resnet18", None)),
    ("imagenet", "3", ("efficientnet_lite0", "imagenet")),
])
def test_a_regime_names_its_model_whatever_the_demos_default(regime, table, model, monkeypatch):
    # The demo's default moved from ResNet-18 at random init to Lite0 from ImageNet; the
    # random regime's recorded runs stay the runs it names (their keys unchanged).
    monkeypatch.setattr(sys, "argv", ["quality.py", "--table", table, "--regime", regime])
    args = quality.parse_args()
    cfg = quality.base_config(args)
    assert (cfg.model.backbone, cfg.model.pretrained) == model
    if table == "demo":
        starts = [cfg.replace(**row.overrides).model for row in quality.table_rows(args)]
        assert [(m.backbone, m.pretrained) for m in starts] == [
            ("resnet18", None), ("efficientnet_lite0", "imagenet")]
