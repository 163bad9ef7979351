"""The editing mask (paper §3.4: DiffEdit adapted to the trained MCDM) and pixel compositing.

DiffEdit asks a text-to-image model where two prompts disagree; here the MCDM itself answers,
which is sharper because it learned to reconstruct x_A (identity samples, §3.3). Procedure
(docs/design-notes.md, "The editing mask"): noise c_s = E(x_A) to strength 0.5 with N draws (one batched call), take

    D = mean over channels and draws of |eps~(p_b) − eps~(p_a)|,   eps~ the nested CFG of Eq. 1,

clamp at mean × ratio, normalise to [0, 1], threshold 0.5 → a binary latent mask. The two
branches share rows 0-2 of the guidance batch, so the difference is exactly
s_p · (e(s, im, p_b) − e(s, im, p_a)) (pedit.edit.guidance.branch_difference): each draw needs rows
3-4 only, 2 U-Net rows instead of 5 (20 rows for the default 10 draws instead of 50). The same
mask up to floating-point rounding; on the bundled model the binary mask and the edit's bytes
are identical (tests/test_mask_rows.py). The draws run as a `MaskJob`, which an edit job
(pedit.edit.job) steps like its sampling steps.

Beyond the paper, the final image keeps the input's pixels exactly outside a dilated, feathered,
upsampled copy of the mask (`pixel_mask`, `composite`), and, with `keep_below` > 0, also inside it
wherever the edit changed no colour channel by `keep_below` / 2 levels or more (`change_weight`):
a latent cell is 8x8 pixels, most of which an expression edit leaves alone, and there the decoded
output differs from the input only by the VAE's reconstruction error. Chosen per model by
measurement on training identities (pedit.eval.mask_tuning); 0 (off) unless the model folder sets it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pedit.arrays import all_finite, blocks, cat, on_device_of, tile_rows, to_host, xp_of
from pedit.edit.guidance import N_ROWS, PROMPT_ROWS
from pedit.edit.steps import Rows, run
from pedit.errors import ConfigError, NonFiniteError
from pedit.edit.learned_mask import learned_weight
from pedit.edit.pixel_mask import refined_weight
from pedit.model.conditions import EditConditions
from pedit.model.mask_settings import MaskConfig  # noqa: F401 (the settings live with the model folder's metadata)


def unet_rows(cfg: MaskConfig | None, images: int = 1) -> int:
    """The largest U-Net batch an edit of `images` images makes: the 5-row sampling step or one
    mask call (`MaskJob`: 2 rows x its draws), whichever is larger, per image; the sampling
    step alone without a mask (cfg None). An exported engine must cover it (pedit.export.backends)."""
    if cfg is None:
        return N_ROWS * images
    draws = min(cfg.batch or cfg.n_noise, cfg.n_noise)
    return max(N_ROWS, PROMPT_ROWS * draws) * images


def expand(cond: EditConditions, n: int) -> EditConditions:
    """Each array repeated n times along the batch: (B, ...) → (nB, ...), draw-major."""
    return EditConditions(*(tile_rows(t, n) for t in (cond.c_s, cond.c_im, cond.c_p_b, cond.c_p_a, cond.c_p_null)))


def _distinct(arrays: list) -> tuple[list, list[int]]:
    """Distinct arrays in order of first use (the same object, or equal values), and each input's index."""
    kept, index = [], []
    for x in arrays:
        at = next((i for i, y in enumerate(kept) if y is x or (y.shape == x.shape and bool(xp_of(x).all(y == x)))),
                  None)
        if at is None:
            kept.append(x)
            at = len(kept) - 1
        index.append(at)
    return kept, index


class MaskJob:
    """|eps~(p_b) − eps~(p_a)| averaged over channels and cfg.n_noise draws at cfg.strength (paper §3.4)
    for K directions of the same B images (conds[0]'s c_s and c_im serve all), one draw chunk a call.

    Each distinct prompt is one row a draw (K directions sharing p_a: K + 1 rows, not 2K), block-wise,
    one block of (draws x B) per prompt. `builder` (pedit.edit.rows) turns two rows into the branch
    difference: s_p [e(s,im,p_b) − e(s,im,p_a)] for a teacher, the student's own eps~ difference.
    The noise is drawn at construction, so a job drawn from a generator before z_T leaves z_T as a
    single edit draws it. `z_A` (B, 4, h, w): the latent to noise when the conditions have c_s dropped.
    """

    def __init__(self, conds: list, scales, cfg, noise_scheduler, noise: Callable, builder, z_A=None):
        conds = [builder.mask_conditions(c, scales) for c in conds]
        self.builder, self.scales, self.cfg = builder, scales, cfg
        first = conds[0]
        z_A = first.c_s if z_A is None else z_A
        self.b, _, self.h, self.w = z_A.shape
        n = cfg.n_noise
        noise_draws = noise((n * self.b, *z_A.shape[1:]))  # (NB, 4, h, w)
        self.t_index = max(0, int(cfg.strength * noise_scheduler.config.num_train_timesteps) - 1)
        xp = xp_of(z_A)
        t = xp.full((n * self.b,), self.t_index, dtype=xp.int64, **on_device_of(z_A))
        self.z_t = noise_scheduler.add_noise(tile_rows(z_A, n), noise_draws, t)  # (NB, 4, h, w), draw-major
        self._t = t
        self.prompts, self.index = _distinct([p for c in conds for p in (c.c_p_b, c.c_p_a)])  # each (B, 77, D)
        self.first = first
        self.per_call = cfg.batch or n
        self.lo = 0
        self.diffs = [[] for _ in conds]
        self.maps = None
        self.error: Exception | None = None  # set by the driver when a call of this job failed

    @property
    def done(self) -> bool:
        return self.error is not None or self.lo >= self.cfg.n_noise

    def _draws(self) -> int:
        return min(self.cfg.n_noise, self.lo + self.per_call) - self.lo

    def rows(self) -> Rows:
        k, b, first = self._draws(), self.b, self.first
        c_im = tile_rows(first.c_im, k)  # (kB, K, D)
        context = cat([cat([tile_rows(p, k), c_im], axis=1) for p in self.prompts])  # (PkB, 77 + K, D)
        c_s_rows = tile_rows(first.c_s, len(self.prompts) * k)  # (PkB, 4, h, w)
        z_t = self.z_t[self.lo * b: (self.lo + k) * b]
        z_in = cat([tile_rows(z_t, len(self.prompts)), c_s_rows], axis=1)  # (PkB, 8, h, w)
        return Rows(z_in, tile_rows(self._t[:1], z_in.shape[0]), context)

    def advance(self, eps) -> None:
        eps = blocks(eps, len(self.prompts))  # P blocks of (kB, 4, h, w)
        xp = xp_of(eps[0])
        for i, out in enumerate(self.diffs):  # eps~(p_b) − eps~(p_a) from their two rows: (kB, 4, h, w)
            e_diff = self.builder.difference(cat([eps[self.index[2 * i]], eps[self.index[2 * i + 1]]]), self.scales)
            out.append(xp.mean(xp.abs(e_diff), axis=1))  # (kB, h, w)
        self.lo += self._draws()
        if self.done:
            n = self.cfg.n_noise
            self.maps = [xp.mean(xp.reshape(cat(d), (n, self.b, self.h, self.w)), axis=0) for d in self.diffs]
            if not all(all_finite(m) for m in self.maps):
                # NaN > threshold is False: without this the mask would be empty and the "edit" the input.
                raise NonFiniteError("The editing mask came out NaN or infinite (the model's predictions are not "
                                     "finite); check the guidance scales and the model's weights.")


def binarize(diff, ratio: float, threshold: float):
    """(B, h, w) difference map → (B, 1, h, w) binary float32 mask: clamp at mean × ratio, scale to [0, 1], threshold."""
    xp = xp_of(diff)
    cap = xp.mean(diff, axis=(1, 2), keepdims=True) * ratio
    diff = xp.minimum(diff, cap)
    diff = diff / xp.clip(xp.max(diff, axis=(1, 2), keepdims=True), min=1e-12)
    return xp.astype(diff > threshold, xp.float32)[:, None]


def difference_maps(denoise, noise_scheduler, conds: list[EditConditions], scales, cfg: MaskConfig,
                    noise: Callable, z_A=None, builder=None) -> list:
    """One (B, h, w) difference map per direction's conditions: a `MaskJob` run alone.
    `noise`: a draw function `noise(shape) -> array`, or a torch.Generator (drawn with pedit.noise.randn
    where the conditions live); `builder`: the model's row builder (pedit.edit.rows; default a teacher's)."""
    if builder is None:
        from pedit.edit.rows import TeacherRows

        builder = TeacherRows()
    job = MaskJob(conds, scales, cfg, noise_scheduler, draw_function(noise, conds[0].c_s if z_A is None else z_A),
                  builder, z_A)
    run([job], denoise)
    return job.maps


def draw_function(noise, like) -> Callable:
    """`noise` as a draw function: itself, or for a torch.Generator its draws (pedit.noise.randn) in
    `like`'s dtype and device."""
    if callable(noise):
        return noise
    from pedit.noise import randn

    return lambda shape: randn(shape, noise, like=like)


def difference_map(denoise, noise_scheduler, cond: EditConditions, scales, cfg: MaskConfig, noise: Callable,
                   z_A=None, builder=None):
    """|eps~(p_b) − eps~(p_a)| averaged over channels and cfg.n_noise draws at cfg.strength: (B, h, w)."""
    return difference_maps(denoise, noise_scheduler, [cond], scales, cfg, noise, z_A, builder)[0]


def editing_mask(denoise, noise_scheduler, cond: EditConditions, scales, cfg: MaskConfig, noise: Callable,
                 z_A=None, builder=None):
    """Binary latent mask (B, 1, h, w), 1 = edit (`difference_map`, then `binarize`)."""
    return binarize(difference_map(denoise, noise_scheduler, cond, scales, cfg, noise, z_A, builder),
                    cfg.ratio, cfg.threshold)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(round(2 * sigma)))  # finite support: beyond it the weight is exactly 0
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(np.float32(-0.5) * (x / np.float32(sigma)) ** 2)
    return k / k.sum()


def _max_filter(m: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Max over a window of 2r + 1 along `axis` (edges: the window cut at the border, as max-pooling pads)."""
    out = m.copy()
    n = m.shape[axis]
    for d in range(1, min(r, n - 1) + 1):
        lo = [slice(None)] * m.ndim
        hi = [slice(None)] * m.ndim
        lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
        np.maximum(out[tuple(lo)], m[tuple(hi)], out=out[tuple(lo)])  # neighbour d to the right
        np.maximum(out[tuple(hi)], m[tuple(lo)], out=out[tuple(hi)])  # neighbour d to the left
    return out


def _blur(m: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    """Convolution with the symmetric kernel k along `axis`, the border replicated."""
    r = k.size // 2
    pad = [(0, 0)] * m.ndim
    pad[axis] = (r, r)
    padded = np.pad(m, pad, mode="edge")
    n = m.shape[axis]
    out = np.zeros_like(m)
    for j in range(k.size):
        window = [slice(None)] * m.ndim
        window[axis] = slice(j, j + n)
        out += k[j] * padded[tuple(window)]
    return out


def pixel_mask(mask, size: int, dilate_px: int, feather_px: float) -> np.ndarray:
    """Latent mask (B, 1, h, w) (a torch tensor on any device, or numpy) → soft pixel blend weight
    (B, 1, size, size) float32 in [0, 1], on the host: the composite is host work in every backend.

    Dilated first so the feathered edge lies outside the edited region, not inside it: with
    dilate_px at least the feather's reach (2 sigma) every edited cell keeps weight 1. With
    dilate_px 0 the feather straddles the edge and eats into the region (a lone cell at feather
    0.5 cells gets at most 0.47 of the edit). Exactly 0 wherever no edited cell is within reach,
    so those pixels are copied untouched. Which blend a model uses is measured (MaskConfig,
    pedit.eval.mask_tuning), not assumed.
    """
    m = np.asarray(to_host(mask), dtype=np.float32)
    h, w = m.shape[-2:]
    rows = np.minimum(np.arange(size) * h // size, h - 1)  # nearest neighbour, as F.interpolate's "nearest"
    cols = np.minimum(np.arange(size) * w // size, w - 1)
    m = m[..., rows, :][..., cols]
    if dilate_px > 0:
        m = _max_filter(_max_filter(m, dilate_px, -1), dilate_px, -2)
    if feather_px > 0:
        k = _gaussian_kernel(feather_px)
        m = _blur(_blur(m, k, -1), k, -2)
    m = np.clip(m, 0, 1)
    m[m < 1 / 512] = 0.0
    return m


def composite(original: np.ndarray, edited: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) images blended by weight (H, W) in [0, 1]; weight 0 → the original byte for byte."""
    w = weight[..., None].astype(np.float32)
    blend = np.rint(original.astype(np.float32) * (1 - w) + edited.astype(np.float32) * w).astype(np.uint8)
    return np.where(w > 0, blend, original)


def change_weight(original: np.ndarray, edited: np.ndarray, keep_below: float) -> np.ndarray:
    """(H, W) float32 in [0, 1] from two uint8 (H, W, 3) images: 0 where every channel changed by less
    than keep_below / 2 levels, 1 where some channel changed by keep_below or more, linear between."""
    change = np.abs(original.astype(np.int16) - edited.astype(np.int16)).max(axis=2).astype(np.float32)
    if keep_below <= 0:  # off: every pixel may change
        return np.ones_like(change)
    return np.clip(2 * change / keep_below - 1, 0, 1)


def keep_outside(original: np.ndarray, raw: np.ndarray, mask_latent, cfg: MaskConfig,
                 diff: np.ndarray | None = None, reconstruction: np.ndarray | None = None):
    """The final image: `raw` inside the blend weight, `original`'s exact bytes where it is 0.

    The weight is cfg.refine's: "latent", the dilated, feathered mask (and, with cfg.keep_below,
    0 inside it where `raw` hardly differs from `original`: change_weight); "pixel", the pixel-
    resolution weight from the difference map `diff` (h, w) before binarisation, the input, the
    edit and, with change_from "reconstruction", the decoded `reconstruction` of the input
    (pedit.edit.pixel_mask); "learned", a small network's prediction of the edited region from the
    same inputs and the latent mask (pedit.edit.learned_mask). A user's mask (`edit`'s user_mask) is taken as given: keep_below gates
    only the model's weight.

    original, raw, reconstruction: (R, R, 3) uint8; mask_latent: (1, 1, h, w) or None (no mask: all of `raw`).
    Returns (image (R, R, 3) uint8, blend weight (R, R) float in [0, 1]).
    """
    if mask_latent is None:
        weight = np.ones(original.shape[:2], dtype=np.float32)
    elif cfg.refine == "pixel":
        if diff is None:
            raise ConfigError("The \"pixel\" mask refinement needs the editing mask's difference map; pass diff=.")
        weight = refined_weight(cfg, diff, original, raw, reconstruction)
    elif cfg.refine == "learned":
        if diff is None:
            raise ConfigError("The \"learned\" mask refinement needs the editing mask's difference map; pass diff=.")
        weight = learned_weight(cfg, diff, original, raw, to_host(mask_latent))
    else:
        size = original.shape[0]
        f = size // mask_latent.shape[-1]
        weight = pixel_mask(mask_latent, size, round(cfg.dilate * f), cfg.feather * f)[0, 0]
        if cfg.keep_below > 0:
            weight = weight * change_weight(original, raw, cfg.keep_below)
    return composite(original, raw, weight), weight
