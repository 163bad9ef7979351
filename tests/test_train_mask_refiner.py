"""scripts/train_mask_refiner.py's soft Jaccard loss: on binary maps it is 1 - pedit.eval.ceiling.mask_iou (up to
its +1 smoothing), and it falls as the prediction covers more of the truth."""

import numpy as np
import pytest

from conftest import load_script

torch = pytest.importorskip("torch")


def script():
    return load_script("train_mask_refiner")


def test_soft_jaccard_is_one_minus_iou_on_binary_maps():
    from pedit.eval.ceiling import mask_iou

    rng = np.random.default_rng(0)
    pred = rng.random((3, 1, 32, 32)) < 0.4
    true = rng.random((3, 1, 32, 32)) < 0.3
    got = float(script().soft_jaccard(torch.from_numpy(pred.astype(np.float32)), torch.from_numpy(true.astype(np.float32))))
    want = np.mean([1 - mask_iou(p[0], t[0]) for p, t in zip(pred, true)])
    assert got == pytest.approx(want, abs=2e-3)  # the +1 smoothing moves it by at most 1 / union


def test_soft_jaccard_falls_with_recall_and_is_zero_when_exact():
    j = script().soft_jaccard
    y = torch.zeros(1, 1, 8, 8)
    y[..., 2:6, 2:6] = 1
    half = y.clone()
    half[..., 2:4, :] = 0
    assert float(j(y, y)) == pytest.approx(0.0)
    assert float(j(half, y)) > float(j(0.5 * y + 0.5 * half, y)) > float(j(y, y))
