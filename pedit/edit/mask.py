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
are identical (tests/test_mask_rows.py).

Beyond the paper, the final image keeps the input's pixels exactly outside a dilated, feathered,
upsampled copy of the mask (`pixel_mask`, `composite`), and, with `keep_below` > 0, also inside it
wherever the edit changed no colour channel by `keep_below` / 2 levels or more (`change_weight`):
a latent cell is 8x8 pixels, most of which an expression edit leaves alone, and there the decoded
output differs from the input only by the VAE's reconstruction error. Chosen per model by
measurement on training identities (pedit.eval.mask_tuning); 0 (off) unless the model folder sets it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pedit.edit.guidance import N_ROWS, PROMPT_ROWS, GuidanceScales, branch_difference
from pedit.errors import NonFiniteError
from pedit.noise import randn
from pedit.model.conditions import EditConditions
from pedit.model.mask_settings import MaskConfig  # noqa: F401 (the settings live with the model folder's metadata)


def unet_rows(cfg: MaskConfig | None, images: int = 1) -> int:
    """The largest U-Net batch an edit of `images` images makes: the 5-row sampling step or one
    mask call (`editing_mask`: 2 rows x its draws), whichever is larger, per image; the sampling
    step alone without a mask (cfg None). An exported engine must cover it (pedit.export.backends)."""
    if cfg is None:
        return N_ROWS * images
    draws = min(cfg.batch or cfg.n_noise, cfg.n_noise)
    return max(N_ROWS, PROMPT_ROWS * draws) * images


def expand(cond: EditConditions, n: int) -> EditConditions:
    """Each tensor repeated n times along the batch: (B, ...) → (nB, ...), draw-major."""
    return EditConditions(*(t.repeat(n, *([1] * (t.dim() - 1))) for t in
                            (cond.c_s, cond.c_im, cond.c_p_b, cond.c_p_a, cond.c_p_null)))


@torch.no_grad()
def editing_mask(denoise, noise_scheduler, cond: EditConditions, scales: GuidanceScales, cfg: MaskConfig,
                 generator: torch.Generator, z_A: torch.Tensor | None = None, distilled: bool = False) -> torch.Tensor:
    """Binary latent mask (B, 1, h, w), 1 = edit. `noise_scheduler` provides `add_noise` (DDPM).

    The noised latent is E(x_A): `cond.c_s`, or `z_A` (B, 4, h, w) when the conditions have c_s
    dropped (the ablation without c_s, the text-only DiffEdit baseline).
    """
    diff = difference_map(denoise, noise_scheduler, cond, scales, cfg, generator, z_A, distilled)
    return binarize(diff, cfg.ratio, cfg.threshold)


@torch.no_grad()
def editing_masks(denoise, noise_scheduler, conds: list[EditConditions], scales: GuidanceScales, cfg: MaskConfig,
                  generator: torch.Generator, distilled: bool = False) -> list[torch.Tensor]:
    """One binary mask (B, 1, h, w) per direction's conditions, all from one noise draw and one call
    per draw chunk (`difference_maps`): what `Editor.edit_many` asks for directions sharing a seed."""
    return [binarize(d, cfg.ratio, cfg.threshold) for d in difference_maps(denoise, noise_scheduler, conds, scales,
                                                                             cfg, generator, distilled=distilled)]


@torch.no_grad()
def difference_map(denoise, noise_scheduler, cond: EditConditions, scales: GuidanceScales, cfg: MaskConfig,
                   generator: torch.Generator, z_A: torch.Tensor | None = None, distilled: bool = False) -> torch.Tensor:
    """|eps~(p_b) − eps~(p_a)| averaged over channels and cfg.n_noise draws at cfg.strength: (B, h, w).

    One U-Net call of 2 rows per draw (rows 3-4, `branch_difference`), cfg.batch draws a call.
    """
    return difference_maps(denoise, noise_scheduler, [cond], scales, cfg, generator, z_A, distilled)[0]


def _distinct(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Distinct tensors in order of first use, and each input's index among them."""
    kept, index = [], []
    for x in tensors:
        at = next((i for i, y in enumerate(kept) if y is x or torch.equal(y, x)), None)
        if at is None:
            kept.append(x)
            at = len(kept) - 1
        index.append(at)
    return kept, index


@torch.no_grad()
def difference_maps(denoise, noise_scheduler, conds: list[EditConditions], scales: GuidanceScales, cfg: MaskConfig,
                    generator: torch.Generator, z_A: torch.Tensor | None = None,
                    distilled: bool = False) -> list[torch.Tensor]:
    """`difference_map` for several directions of the same B images (same c_s, c_im; conds[0]'s are
    used) and the same noise: each distinct prompt (every p_b, the p_a's once) is one row a draw,
    so K directions with one p_a cost K + 1 rows a draw, not 2K. Rows block-wise, one block of
    (draws x B) per prompt. Returns one (B, h, w) map per cond. `distilled`: the denoiser is a
    guidance-distilled student, whose two rows at `scales` (the scale token on c_im) are eps~ already."""
    if distilled:
        from pedit.model.distilled import with_scales

        conds = [with_scales(c, scales) for c in conds]
    first = conds[0]
    z_A = first.c_s if z_A is None else z_A
    b, _, h, w = z_A.shape
    n = cfg.n_noise
    noise = randn((n * b, *z_A.shape[1:]), generator, like=z_A)  # (NB, 4, h, w)
    t_index = max(0, int(cfg.strength * noise_scheduler.config.num_train_timesteps) - 1)
    t = torch.full((n * b,), t_index, dtype=torch.long, device=z_A.device)
    z_t = noise_scheduler.add_noise(z_A.repeat(n, 1, 1, 1), noise, t)  # (NB, 4, h, w), draw-major like `expand`
    prompts, index = _distinct([p for c in conds for p in (c.c_p_b, c.c_p_a)])  # each (B, 77, D)
    per_call = cfg.batch or n
    diffs = [[] for _ in conds]
    for lo in range(0, n, per_call):  # draws lo..hi in one call: every row sees the noise it would in one batch
        k = min(n, lo + per_call) - lo
        c_im = first.c_im.repeat(k, 1, 1)  # (kB, K, D)
        context = torch.cat([torch.cat([p.repeat(k, 1, 1), c_im], dim=1) for p in prompts])  # (PkB, 77 + K, D)
        c_s_rows = first.c_s.repeat(len(prompts) * k, 1, 1, 1)  # (PkB, 4, h, w)
        z_in = torch.cat([z_t[lo * b: (lo + k) * b].repeat(len(prompts), 1, 1, 1), c_s_rows], dim=1)  # (PkB, 8, h, w)
        eps = denoise(z_in, t[0], context).chunk(len(prompts))  # P blocks of (kB, 4, h, w)
        for i, out in enumerate(diffs):  # eps~(p_b) − eps~(p_a) from their two rows: (kB, 4, h, w)
            e_diff = branch_difference(torch.cat([eps[index[2 * i]], eps[index[2 * i + 1]]]), scales, distilled)
            out.append(e_diff.abs().mean(dim=1))  # (kB, h, w)
    maps = [torch.cat(d).view(n, b, h, w).mean(dim=0) for d in diffs]  # (B, h, w) each
    if not all(torch.isfinite(d).all() for d in maps):
        # NaN > threshold is False: without this the mask would be empty and the "edit" the input.
        raise NonFiniteError("The editing mask came out NaN or infinite (the model's predictions are not finite); "
                             "check the guidance scales and the model's weights.")
    return maps


def binarize(diff: torch.Tensor, ratio: float, threshold: float) -> torch.Tensor:
    """(B, h, w) difference map → (B, 1, h, w) binary mask: clamp at mean × ratio, scale to [0, 1], threshold."""
    cap = diff.mean(dim=(1, 2), keepdim=True) * ratio
    diff = torch.minimum(diff, cap)
    diff = diff / diff.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return (diff > threshold).float()[:, None]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(round(2 * sigma)))  # finite support: beyond it the weight is exactly 0
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def pixel_mask(mask: torch.Tensor, size: int, dilate_px: int, feather_px: float) -> torch.Tensor:
    """Latent mask (B, 1, h, w) → soft pixel blend weight (B, 1, size, size) in [0, 1].

    Dilated first so the feathered edge lies outside the edited region, not inside it: with
    dilate_px at least the feather's reach (2 sigma) every edited cell keeps weight 1. With
    dilate_px 0 the feather straddles the edge and eats into the region (a lone cell at feather
    0.5 cells gets at most 0.47 of the edit). Exactly 0 wherever no edited cell is within reach,
    so those pixels are copied untouched. Which blend a model uses is measured (MaskConfig,
    pedit.eval.mask_tuning), not assumed.
    """
    m = F.interpolate(mask.float().cpu(), size=(size, size), mode="nearest")
    if dilate_px > 0:
        m = F.max_pool2d(m, 2 * dilate_px + 1, stride=1, padding=dilate_px)
    if feather_px > 0:
        k = _gaussian_kernel(feather_px)
        r = k.numel() // 2
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        m = F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    m = m.clamp(0, 1)
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
