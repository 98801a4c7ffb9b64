"""QC pictures: CT slices in a lung window with outlines drawn over them.

One row of panels (three axial slices through the lungs and one coronal), radiological
convention (patient right on the viewer's left, anterior up, head up), pixels at their true
aspect ratio. Written with matplotlib's non-interactive backend, so it runs on nodes without a
display.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lungcam.core.atomic import atomic_path  # noqa: E402

LUNG_WINDOW = (-1350.0, 150.0)
OUTLINE_COLOURS = {1: "#e41a1c", 2: "#00bfff"}  # right lung red, left lung blue


def lung_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Axial slice indices spread over the lungs' z extent (25%, 50%, 75% for three)."""
    z = np.nonzero(labels.any(axis=(1, 2)))[0]
    if z.size == 0:
        return list(np.linspace(0, labels.shape[0] - 1, count + 2).astype(int)[1:-1])
    return [int(z[int(f * (z.size - 1))]) for f in np.linspace(0, 1, count + 2)[1:-1]]


def _draw_outlines(ax, labels: np.ndarray) -> None:
    """Each lung label's outline on a 2D panel (right lung red, left blue)."""
    for value, colour in OUTLINE_COLOURS.items():
        if (labels == value).any():
            ax.contour(labels == value, levels=[0.5], colors=colour, linewidths=0.8)


def _save_figure(fig, path: Path | str, title: str) -> None:
    fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, facecolor="black")
    plt.close(fig)


def lung_montage(hu_lps: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], path: Path | str, title: str) -> None:
    """Write axial and coronal views of an LPS (z, y, x) volume with each label's outline."""
    axial = lung_slices(labels)
    inside = np.argwhere(labels > 0)
    coronal_y = int(np.median(inside[:, 1])) if inside.size else hu_lps.shape[1] // 2
    fig, axes = plt.subplots(1, 4, figsize=(16.0, 4.4), facecolor="black")
    views = [(hu_lps[k], labels[k], spacing[1] / spacing[2], f"axial {k}") for k in axial]
    views.append((hu_lps[::-1, coronal_y], labels[::-1, coronal_y], spacing[0] / spacing[2], "coronal"))
    for ax, (image, outline, aspect, name) in zip(axes, views):
        ax.imshow(image, cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect=aspect, interpolation="nearest")
        _draw_outlines(ax, outline)
        _mark_sides(ax)
        ax.set_title(name, color="white", fontsize=9)
        ax.axis("off")
    _save_figure(fig, path, title)


KEY_SLICES_TEXT = "lungcam key slices"  # PNG text chunk: what the figure shows, as JSON
KEY_SLICE_GAP_MM = 20.0  # key slices at least this far apart, so that they show more than one lesion


def key_slices(cam: np.ndarray, spacing_z: float, count: int = 3) -> list[int]:
    """Up to `count` axial slices (LPS z) holding the most map mass, each at least
    KEY_SLICE_GAP_MM from the others (the next best slice elsewhere rather than a neighbour of
    the best), from the head down."""
    mass = cam.reshape(cam.shape[0], -1).sum(axis=1)
    gap = max(1, int(round(KEY_SLICE_GAP_MM / spacing_z)))
    chosen: list[int] = []
    for k in np.argsort(-mass, kind="stable"):
        if mass[k] <= 0 or len(chosen) == count:
            break
        if all(abs(int(k) - c) >= gap for c in chosen):
            chosen.append(int(k))
    return sorted(chosen, reverse=True)


def _mark_sides(ax) -> None:
    """R and L at the panel's sides: the patient's right is on the viewer's left."""
    for x, letter, align in ((0.02, "R", "left"), (0.98, "L", "right")):
        ax.text(
            x,
            0.5,
            letter,
            transform=ax.transAxes,
            color="white",
            fontsize=11,
            fontweight="bold",
            ha=align,
            va="center",
            bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1.5},
        )


def key_slices_figure(
    hu_lps: np.ndarray,
    labels: np.ndarray,
    cam: np.ndarray,
    spacing: tuple[float, float, float],
    z_mm: np.ndarray,
    path: Path | str,
    title: str,
    class_name: str,
) -> list[int]:
    """Write the key slices of a CAM (LPS z, y, x, like the CT) over the CT in a lung window, the
    map as a heatmap where it is at least 0.1 of its maximum, with a colour bar in map units, the
    lung outlines and R/L markers; each panel names its slice (counted from the top, as PACS
    lists a series head first) and its position `z_mm` (patient superior, mm). Returns the
    slices shown."""
    chosen = key_slices(cam, spacing[0]) or lung_slices(labels)
    peak = float(cam.max())
    fig, axes = plt.subplots(1, len(chosen), figsize=(4.6 * len(chosen) + 0.9, 4.6), facecolor="black", squeeze=False)
    aspect = spacing[1] / spacing[2]
    heat = None
    for ax, k in zip(axes[0], chosen):
        ax.imshow(hu_lps[k], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], aspect=aspect, interpolation="nearest")
        shown = np.ma.masked_less(cam[k], 0.1 * peak) if peak > 0 else np.ma.masked_all(cam[k].shape)
        heat = ax.imshow(shown, cmap="inferno", vmin=0.0, vmax=peak or 1.0, alpha=0.55, aspect=aspect, interpolation="bilinear")
        _draw_outlines(ax, labels[k])
        _mark_sides(ax)
        ax.set_title(f"slice {cam.shape[0] - k} of {cam.shape[0]} from the top, z {float(z_mm[k]):.1f} mm", color="white", fontsize=9)
        ax.axis("off")
    bar = fig.colorbar(heat, ax=axes[0].tolist(), fraction=0.025, pad=0.01)
    bar.set_label(f"map of {class_name} evidence", color="white", fontsize=9)
    bar.ax.tick_params(colors="white", labelsize=8)
    fig.suptitle(title, color="white", fontsize=10)
    shown = {
        "class": class_name,
        "scale": [round(0.1 * peak, 4), round(peak, 4)],
        "slices": [{"from_top": cam.shape[0] - k, "of": cam.shape[0], "z_mm": round(float(z_mm[k]), 1)} for k in chosen],
    }
    with atomic_path(path) as tmp:  # what the picture shows, for the report's caption
        fig.savefig(tmp, dpi=80, facecolor="black", bbox_inches="tight", metadata={KEY_SLICES_TEXT: json.dumps(shown)})
    plt.close(fig)
    return chosen


def key_slices_shown(path: Path | str) -> dict | None:
    """What a key slices figure shows (class, colour scale, slices), from its PNG text."""
    from PIL import Image

    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(KEY_SLICES_TEXT)
    return json.loads(text) if text else None
