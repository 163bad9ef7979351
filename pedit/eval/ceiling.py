"""How well any mask on the latent grid can fit a true pixel mask: the ceiling of the editing mask's IoU.

The MCDM's editing mask lives on the latent grid (16×16 for the 128 px toon model) and is upsampled
to pixels; a true mask with detail finer than a cell (a mouth, eyebrows) cannot be matched by any
grid mask. The best IoU a set S of cells can reach is max_S sum_S a_i / (|M| + sum_S (c - a_i)),
a_i the true pixels in cell i and c the pixels per cell. For a fixed ratio the objective is linear
in the cells, so the optimum takes the cells whose covered fraction a_i / c is above some level:
sorting cells by that fraction and trying every prefix finds it exactly.
"""

from __future__ import annotations

import numpy as np


def mask_iou(pred: np.ndarray, true_mask: np.ndarray) -> float:
    """IoU of two boolean masks of one shape; 1.0 when both are empty (the evaluation's convention)."""
    union = np.logical_or(pred, true_mask).sum()
    return float(np.logical_and(pred, true_mask).sum() / union) if union else 1.0


def iou_ceiling(true_mask: np.ndarray, cells: int) -> float:
    """The best IoU any binary cells×cells mask (upsampled by nearest neighbour) reaches on `true_mask` (H, W)."""
    return mask_iou(grid_truth(true_mask, cells), true_mask)


def grid_truth(true_mask: np.ndarray, cells: int) -> np.ndarray:
    """The true region on the latent grid: the cells×cells mask (upsampled to (H, W) by nearest neighbour)
    with the best IoU against `true_mask`, i.e. the mask an ideal latent-grid editor would draw. Empty
    for an empty true mask."""
    h, w = true_mask.shape
    if h % cells or w % cells:
        raise ValueError(f"mask {h}x{w} is not a whole number of {cells}x{cells} cells")
    ch, cw = h // cells, w // cells
    per_cell = true_mask.reshape(cells, ch, cells, cw).sum(axis=(1, 3)).ravel()  # a_i
    chosen = np.zeros(cells * cells, dtype=bool)
    if per_cell.any():
        order = np.argsort(-per_cell, kind="stable")
        a = per_cell[order][per_cell[order] > 0].astype(np.float64)
        inter = np.cumsum(a)
        union = int(true_mask.sum()) + np.cumsum(ch * cw - a)
        chosen[order[: int(np.argmax(inter / union)) + 1]] = True
    return np.kron(chosen.reshape(cells, cells), np.ones((ch, cw), dtype=bool)).astype(bool)
