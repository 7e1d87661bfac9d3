"""Class maps as images, IoU tables and report figures (pure Pillow/matplotlib)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pdml_ray.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
from pdml_ray.metrics import ConfusionMatrix
from pdml_ray.reports import (IGNORE_COLOR, class_id_image, colorize, iou_table_csv,
                              iou_table_markdown, overlay, plot_distance_histograms, png_bytes,
                              prediction_grid, row_normalized, save_figure,
                              write_evaluation_report)

CLASSES, PALETTE = SYNTHETIC_CLASSES, SYNTHETIC_PALETTE


def class_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(CLASSES), (height, width))


def test_class_id_png_holds_the_ids_and_shows_the_palette():
    ids = class_map(13, 29)
    decoded = Image.open(io.BytesIO(png_bytes(class_id_image(ids, PALETTE))))
    assert decoded.mode == "P" and decoded.size == (29, 13)
    assert np.array_equal(np.asarray(decoded), ids)
    palette = np.asarray(decoded.getpalette()[:3 * len(PALETTE)]).reshape(-1, 3)
    assert np.array_equal(palette, np.asarray(PALETTE))
    assert np.array_equal(np.asarray(decoded.convert("RGB")), colorize(ids, PALETTE))
    with pytest.raises(ValueError, match="0..255"):
        class_id_image(np.full((2, 2), 300), PALETTE)


def test_colorize_paints_the_ignore_label_black():
    ids = np.array([[0, 7], [255, 3]])
    colors = colorize(ids, PALETTE)
    assert colors.dtype == np.uint8 and colors.shape == (2, 2, 3)
    assert tuple(colors[0, 1]) == PALETTE[7] and tuple(colors[1, 0]) == (0, 0, 0)


@pytest.mark.parametrize("size", [(37, 61), (300, 200), (5, 9)])
def test_overlay_blends_the_photo_and_adds_a_legend_beside_it(size):
    height, width = size
    photo = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    ids = np.zeros(size, dtype=np.int64)
    ids[:, width // 2:] = 4  # two classes: sky and ball
    picture = np.asarray(overlay(photo, ids, PALETTE, CLASSES, alpha=0.25))
    assert picture.shape[1] > width and picture.shape[0] >= height  # legend to the right
    expected = np.rint(photo * 0.75 + colorize(ids, PALETTE) * 0.25).astype(np.uint8)
    assert np.abs(picture[:height, :width].astype(int) - expected).max() <= 1
    legend = picture[:, width:].reshape(-1, 3)
    for class_id in (0, 4):  # each class present has its swatch in the legend
        assert (legend == PALETTE[class_id]).all(axis=1).any()
    assert not (legend == PALETTE[7]).all(axis=1).any()  # an absent class has none


def test_overlay_refuses_a_mask_of_another_size():
    with pytest.raises(ValueError, match="differ"):
        overlay(np.zeros((4, 5, 3), np.uint8), np.zeros((5, 4), int), PALETTE, CLASSES)


def known_scores():
    """Three classes of which the third is absent from truth and prediction."""
    confusion = ConfusionMatrix(3)
    truth = torch.tensor([0, 0, 0, 1, 1, 255])
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    confusion.update(pred, truth)
    return confusion, confusion.compute()


def test_iou_tables_match_the_confusion_matrix():
    confusion, scores = known_scores()
    # class 0: tp 2, fn 1, fp 0 -> 2/3; class 1: tp 2, fp 1 -> 2/3; class 2: absent (NaN)
    assert scores["per_class_iou"][:2] == pytest.approx([2 / 3, 2 / 3])
    names = ["road", "car, parked", "tree"]
    rows = list(csv.reader(io.StringIO(iou_table_csv(names, scores["per_class_iou"],
                                                     miou=scores["miou"],
                                                     pixel_acc=scores["pixel_acc"]))))
    assert rows[0] == ["class", "IoU"]
    assert rows[1] == ["road", "0.666667"] and rows[2] == ["car, parked", "0.666667"]
    assert rows[3] == ["tree", ""]  # undefined IoU stays empty, not 0
    assert rows[4] == ["mIoU", "0.666667"] and rows[5] == ["pixel accuracy", "0.800000"]

    markdown = iou_table_markdown(names, scores["per_class_iou"], miou=scores["miou"],
                                  pixel_acc=scores["pixel_acc"], columns=2, title="v3 on val")
    lines = markdown.splitlines()
    assert lines[0] == "# v3 on val"
    # Table 6 layout: classes across in blocks of `columns`, mIoU and accuracy last.
    assert "| road | car, parked |" in lines and "| 66.7 | 66.7 |" in lines
    assert "| tree | mIoU |" in lines and "| – | 66.7 |" in lines
    assert "| pixel acc |" in lines and "| 80.0% |" in lines


def test_row_normalisation_gives_shares_of_each_true_class():
    shares = row_normalized(np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]]))
    np.testing.assert_allclose(shares, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])


def test_evaluation_report_files(tmp_path):
    confusion, scores = known_scores()
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), class_map(20, 30, 1) % 3,
                class_map(20, 30, 2) % 3) for _ in range(2)]
    written = write_evaluation_report(tmp_path / "report", class_names=CLASSES[:3],
                                      palette=PALETTE[:3], confusion=confusion.mat.numpy(),
                                      scores=scores, samples=samples, title="test")
    assert sorted(path.name for path in written) == [
        "confusion_matrix.png", "per_class_iou.csv", "per_class_iou.md", "predictions.png"]
    for path in written:
        assert path.stat().st_size > 0
    grid = Image.open(tmp_path / "report" / "predictions.png")
    assert grid.width > grid.height / 2  # three columns side by side, two rows
    assert not list((tmp_path / "report").glob(".*.tmp"))  # atomic writes left nothing behind


def test_distance_histograms_figure(tmp_path):
    rng = np.random.default_rng(0)
    figure = plot_distance_histograms({"epoch 1": (rng.normal(10, 2, 500), rng.normal(11, 2, 500)),
                                       "epoch 9": (rng.normal(4, 1, 500), np.array([math.nan]))})
    assert len(figure.axes) == 2
    image = Image.open(save_figure(figure, tmp_path / "hist.png"))
    assert image.width > image.height  # two panels side by side


def test_prediction_grid_rows_are_image_truth_prediction_at_one_height():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (10, 20, 3), dtype=np.uint8),
              rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)]
    truths = [class_map(10, 20, seed=2), np.full((20, 20), 255)]
    truths[0][0, 0] = 255  # unlabelled: black
    predictions = [torch.as_tensor(class_map(10, 20, seed=3)), torch.full((20, 20), 4)]
    grid = prediction_grid([torch.as_tensor(images[0]), images[1]], truths, predictions,
                           PALETTE, cell_height=20, gap=2)

    # Row 1 (10x20 scaled x2 to 20x40) is the widest: 3 cells of 40 and 2 gaps.
    assert grid.shape == (2 * 20 + 2, 3 * 40 + 2 * 2, 3) and grid.dtype == np.uint8
    first_truth = grid[:20, 42:82]
    assert np.array_equal(first_truth[::2, ::2], colorize(truths[0], PALETTE))  # nearest x2
    assert np.array_equal(grid[:20, 84:124][::2, ::2], colorize(predictions[0].numpy(), PALETTE))
    assert (first_truth[0, 0] == IGNORE_COLOR).all()
    # Row 2 (square) keeps its size; its prediction is one colour; the rest is white.
    second = grid[22:42]
    assert np.array_equal(second[:, :20], images[1])
    assert (second[:, 22:42] == IGNORE_COLOR).all()
    assert (second[:, 44:64] == np.asarray(PALETTE[4], dtype=np.uint8)).all()
    assert (second[:, 64:] == 255).all() and (grid[20:22] == 255).all()


def test_prediction_grid_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="differ in size"):
        prediction_grid([np.zeros((4, 4, 3), np.uint8)], [np.zeros((4, 5))], [np.zeros((4, 4))],
                        PALETTE)
    with pytest.raises(ValueError, match="as many"):
        prediction_grid([], [], [], PALETTE)
