"""Pictures and tables of a model's results: class-id maps, overlays, IoU tables, plots.

Pure image and plotting code (Pillow, matplotlib's object-oriented API on the Agg canvas,
no pyplot state), no Ray and no MLflow: prediction, evaluation and training all draw
with it and log the files themselves.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image, ImageDraw, ImageFont

from pdml_ray.data.io import atomic_file

IGNORE_COLOR = (0, 0, 0)  # ground-truth pixels without a label (255)
Palette = Sequence[Sequence[int]]


# -- class maps as images ------------------------------------------------------------
def colorize(class_map: np.ndarray, palette: Palette) -> np.ndarray:
    """``uint8 (H, W, 3)`` palette colours of integer class ids ``(H, W)``; ids outside
    the palette (the ignore label 255) are black."""
    colors = np.zeros((256, 3), dtype=np.uint8)
    colors[:len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    ids = np.asarray(class_map)
    return colors[np.where((ids >= 0) & (ids < len(palette)), ids, 255).astype(np.intp)]


def class_id_image(class_map: np.ndarray, palette: Palette) -> Image.Image:
    """A palette-mode ("P") image whose pixel values are the class ids ``(H, W)`` and whose
    palette shows them in the dataset's colours: one file, readable both ways."""
    ids = np.asarray(class_map)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"class ids must lie in 0..255 for an 8-bit PNG, got {ids.min()}.."
                         f"{ids.max()}")
    image = Image.fromarray(ids.astype(np.uint8))
    colors = np.zeros((256, 3), dtype=np.uint8)
    colors[:len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    image.putpalette(colors.ravel().tolist())  # an "L" image becomes "P", values unchanged
    return image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def overlay(image: np.ndarray, class_map: np.ndarray, palette: Palette,
            class_names: Sequence[str], *, alpha: float = 0.5) -> Image.Image:
    """The photo blended with its colour mask, and a legend panel on its right.

    Args:
        image: ``uint8 (H, W, 3)`` RGB photo.
        class_map: ``(H, W)`` predicted class ids.
        alpha: weight of the mask colours in the blend (0: photo only, 1: mask only).

    Returns:
        An RGB image of width ``W + legend width`` and height ``max(H, legend height)``:
        the blend at the top left, untouched by the legend, which lists the classes
        present, largest share first, with their share of the pixels.
    """
    if image.shape[:2] != class_map.shape:
        raise ValueError(f"image {image.shape[:2]} and class map {class_map.shape} differ in size")
    blend = image.astype(np.float32) * (1 - alpha) + colorize(class_map, palette) * alpha
    blend = Image.fromarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8))
    ids, counts = np.unique(class_map, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = class_map.size
    entries = [(int(ids[i]), f"{class_names[ids[i]]}  {100 * counts[i] / total:.1f}%")
               for i in order if 0 <= ids[i] < len(class_names)]

    height, width = class_map.shape
    font_px = int(np.clip(height / 30, 11, 48))  # readable on a thumbnail and on a large photo
    font = _font(font_px)
    pad, row = font_px // 2, int(font_px * 1.5)
    measure = ImageDraw.Draw(blend)
    text_w = max((measure.textlength(text, font=font) for _, text in entries), default=0)
    panel_w = int(pad * 3 + font_px + text_w)
    panel_h = pad * 2 + row * len(entries)
    canvas = Image.new("RGB", (width + panel_w, max(height, panel_h)), (255, 255, 255))
    canvas.paste(blend, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (class_id, text) in enumerate(entries):
        top = pad + k * row
        left = width + pad
        draw.rectangle([left, top, left + font_px, top + font_px],
                       fill=tuple(int(c) for c in palette[class_id]), outline=(0, 0, 0))
        draw.text((left + font_px + pad, top + font_px / 2), text, fill=(0, 0, 0), font=font,
                  anchor="lm")
    return canvas


def prediction_grid(images, truths, predictions, palette: Palette, *,
                    cell_height: int = 128, gap: int = 2) -> np.ndarray:
    """Rows of image | ground truth | prediction as one ``uint8 (rows, width, 3)`` picture.

    Args:
        images: N ``uint8 (H_i, W_i, 3)`` RGB images (arrays or tensors; a stacked
            ``(N, H, W, 3)`` works too).
        truths: N ``(H_i, W_i)`` class ids, 255 = unlabelled (drawn black).
        predictions: N ``(H_i, W_i)`` predicted class ids.
        cell_height: every row is scaled to this height, keeping its aspect ratio
            (bilinear for the image, nearest for the class maps).
        gap: white pixels between cells and rows.

    Returns:
        ``N * cell_height + (N - 1) * gap`` rows; the width of the widest row
        (``3 * cell width + 2 * gap``), narrower rows padded white on the right.
    """
    if not len(images) or not len(images) == len(truths) == len(predictions):
        raise ValueError(f"need as many images, truths and predictions, at least one; got "
                         f"{len(images)}, {len(truths)}, {len(predictions)}")
    rows = []
    for image, truth, prediction in zip(images, truths, predictions):
        image, truth, prediction = (np.asarray(image), np.asarray(truth), np.asarray(prediction))
        if not image.shape[:2] == truth.shape == prediction.shape:
            raise ValueError(f"image {image.shape[:2]}, truth {truth.shape} and prediction "
                             f"{prediction.shape} differ in size")
        height, width = truth.shape
        size = (max(1, round(width * cell_height / height)), cell_height)
        cells = [np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, Image.BILINEAR)),
                 *(np.asarray(Image.fromarray(colorize(ids, palette)).resize(size, Image.NEAREST))
                   for ids in (truth, prediction))]
        spacer = np.full((cell_height, gap, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([cells[0], spacer, cells[1], spacer, cells[2]], axis=1))
    width = max(row.shape[1] for row in rows)
    grid = np.full((len(rows) * cell_height + (len(rows) - 1) * gap, width, 3), 255, np.uint8)
    for index, row in enumerate(rows):
        top = index * (cell_height + gap)
        grid[top:top + cell_height, :row.shape[1]] = row
    return grid


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding of ``image`` (palette and mode kept)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


# -- tables --------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], *,
                   right_aligned: bool = False) -> str:
    """``rows`` under ``header`` as a markdown table, one line per row; cells are written
    with ``str`` (format numbers before). ``right_aligned``: numbers' columns (``---:``)."""
    rule = "---:|" if right_aligned else "---|"
    lines = ["| " + " | ".join(header) + " |", "|" + rule * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _percent(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def iou_table_markdown(class_names: Sequence[str], per_class_iou: Sequence[float], *,
                       miou: float, pixel_acc: float, columns: int = 10,
                       title: str | None = None) -> str:
    """Per-class IoU in the layout of the paper's Table 6: classes across, in blocks of
    ``columns``, IoU in percent with one decimal; mIoU and pixel accuracy close the last
    block. "–" marks a class absent from both truth and prediction (IoU undefined)."""
    cells = [(name, _percent(iou)) for name, iou in zip(class_names, per_class_iou)]
    accuracy = _percent(pixel_acc)
    cells += [("mIoU", _percent(miou)), ("pixel acc", accuracy if accuracy == "–" else f"{accuracy}%")]
    lines = [f"# {title}", ""] if title else []
    lines.append("IoU (%) per class on the validation split; – : class absent from truth "
                 "and prediction.")
    text = "\n".join(lines) + "\n"
    for start in range(0, len(cells), columns):
        names, values = zip(*cells[start:start + columns])
        text += "\n" + markdown_table(names, [values], right_aligned=True)
    return text


def iou_table_csv(class_names: Sequence[str], per_class_iou: Sequence[float], *,
                  miou: float, pixel_acc: float) -> str:
    """``class,IoU`` rows (fractions in [0, 1], empty when undefined), then ``mIoU`` and
    ``pixel accuracy`` rows."""
    def number(value: float) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.6f}"

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "IoU"])
    writer.writerows([name, number(iou)] for name, iou in zip(class_names, per_class_iou))
    writer.writerows([["mIoU", number(miou)], ["pixel accuracy", number(pixel_acc)]])
    return buffer.getvalue()


# -- figures -------------------------------------------------------------------------
def save_figure(figure: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG at ``path`` atomically (a reader never sees half a file)."""
    FigureCanvasAgg(figure)
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def row_normalized(confusion: np.ndarray) -> np.ndarray:
    """``(C, C)`` counts ``[true, predicted]`` -> each row divided by its sum: the share of
    a true class's pixels given to each prediction. Rows without pixels stay 0."""
    mat = np.asarray(confusion, dtype=np.float64)
    totals = mat.sum(axis=1, keepdims=True)
    return np.divide(mat, totals, out=np.zeros_like(mat), where=totals > 0)


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], *,
                          title: str = "") -> Figure:
    """Heatmap of the row-normalised confusion matrix, true classes down, predicted
    across; shares are written in the cells when there are at most 20 classes."""
    shares = row_normalized(confusion)
    count = len(class_names)
    side = float(np.clip(0.45 * count + 2.5, 5, 40))
    figure = Figure(figsize=(side + 1.5, side))
    axes = figure.subplots()
    shown = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    label_size = float(np.clip(0.6 * 72 * side / max(count, 1), 4, 10))  # 60% of a row, in pt
    axes.set_xticks(range(count), class_names, rotation=90, fontsize=label_size)
    axes.set_yticks(range(count), class_names, fontsize=label_size)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if title:
        axes.set_title(title)
    if count <= 20:
        for t in range(count):
            for p in range(count):
                if shares[t, p] >= 0.005:
                    axes.text(p, t, f"{shares[t, p]:.2f}", ha="center", va="center", fontsize=7,
                              color="white" if shares[t, p] > 0.5 else "black")
    return figure


def plot_prediction_grid(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                         class_names: Sequence[str], palette: Palette, *,
                         title: str = "") -> Figure:
    """One row per sample ``(image uint8 (H, W, 3), truth (H, W), prediction (H, W))``:
    image | ground truth | prediction in palette colours (unlabelled truth black), and a
    legend of the classes that appear."""
    if not samples:
        raise ValueError("no samples to draw")
    rows = len(samples)
    aspect = max(image.shape[1] / image.shape[0] for image, _, _ in samples)
    figure = Figure(figsize=(3 * 2.6 * min(aspect, 2.5), 2.6 * rows + 1.0), layout="constrained")
    axes = figure.subplots(rows, 3, squeeze=False)
    present: set[int] = set()
    for r, (image, truth, prediction) in enumerate(samples):
        for c, (picture, name) in enumerate(((image, "image"),
                                             (colorize(truth, palette), "ground truth"),
                                             (colorize(prediction, palette), "prediction"))):
            axes[r, c].imshow(picture, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name)
        present.update(int(v) for v in np.unique(truth) if v < len(class_names))
        present.update(int(v) for v in np.unique(prediction) if v < len(class_names))
    handles = [Patch(facecolor=np.asarray(palette[k]) / 255, edgecolor="black",
                     label=class_names[k]) for k in sorted(present)]
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8) or 1,
                  frameon=False, fontsize=9)
    if title:
        figure.suptitle(title)
    return figure


def plot_distance_histograms(epochs: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                             bins: int = 50, title: str = "") -> Figure:
    """The paper's Figure 4: per-triplet dis(+) and dis(-) histograms, one panel per
    entry of ``epochs`` (label -> (dis(+) (T,), dis(-) (T,))), on a shared distance axis."""
    values = [np.asarray(v, dtype=np.float64) for pair in epochs.values() for v in pair]
    values = [v[np.isfinite(v)] for v in values]
    top = max((float(v.max()) for v in values if v.size), default=1.0)
    edges = np.linspace(0.0, top * 1.02 or 1.0, bins + 1)
    figure = Figure(figsize=(5.0 * max(len(epochs), 1), 3.8), layout="constrained")
    axes = figure.subplots(1, max(len(epochs), 1), squeeze=False)[0]
    for ax, (label, (pos, neg)) in zip(axes, epochs.items()):
        pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
        ax.hist(pos[np.isfinite(pos)], bins=edges, alpha=0.6, color="tab:blue",
                label=f"dis(+)  n={pos.size}")
        ax.hist(neg[np.isfinite(neg)], bins=edges, alpha=0.6, color="tab:red",
                label=f"dis(-)  n={neg.size}")
        ax.set_title(label)
        ax.set_xlabel("distance between point embeddings")
        ax.set_ylabel("triplets")
        ax.legend()
    if title:
        figure.suptitle(title)
    return figure


def write_evaluation_report(folder: str | Path, *, class_names: Sequence[str], palette: Palette,
                            confusion: np.ndarray, scores: Mapping, samples: Sequence,
                            title: str) -> list[Path]:
    """Write the IoU table (markdown + CSV), the confusion heatmap and the prediction grid
    into ``folder``; returns the files written.

    ``scores`` holds ``miou``, ``pixel_acc`` and ``per_class_iou`` (as
    ``ConfusionMatrix.compute`` gives them); ``samples`` as in :func:`plot_prediction_grid`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = dict(miou=scores["miou"], pixel_acc=scores["pixel_acc"])
    written = []
    for name, text in (("per_class_iou.md", iou_table_markdown(
                            class_names, scores["per_class_iou"], title=title, **table)),
                       ("per_class_iou.csv", iou_table_csv(
                            class_names, scores["per_class_iou"], **table))):
        with atomic_file(folder / name) as tmp:
            tmp.write_text(text)
        written.append(folder / name)
    heading = f"{title}\nmIoU {scores['miou']:.4f}, pixel accuracy {scores['pixel_acc']:.4f}"
    written.append(save_figure(plot_confusion_matrix(confusion, class_names, title=heading),
                               folder / "confusion_matrix.png"))
    if samples:
        written.append(save_figure(plot_prediction_grid(samples, class_names, palette,
                                                        title=title), folder / "predictions.png"))
    return written
