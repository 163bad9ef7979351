"""Multi-condition classifier-free guidance and the masked two-branch rule (paper Eq. 1 and 3).

One U-Net call per denoising step evaluates a batch of 5 rows per image (never 8 calls, never 5
sequential ones; docs/design-notes.md, "Guidance rows"):

    row 0  e(∅, ∅, ∅)          nothing:             c_s = 0, c_im = 0, c_p = ""
    row 1  e(s, ∅, ∅)          spatial only:        c_s,     c_im = 0, c_p = ""
    row 2  e(s, im, ∅)         spatial + image:     c_s,     c_im,     c_p = ""
    row 3  e(s, im, p_b)       all, target prompt
    row 4  e(s, im, p_a)       all, source prompt

The two branches of Eq. 3 share rows 0-2, so 5 rows give every term (never 8 calls, never 5
sequential calls). Rows are laid out block-wise, `(5B, ...)` = 5 blocks of B, so `chunk(5)` splits
them. These functions know nothing of the backend that produced the rows, nor of the array library:
torch tensors (CPU, CUDA) and numpy arrays (the torch-free runtime) take the same code (pedit.arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

from pedit.arrays import as_dtype, blocks, xp_of
from pedit.model.sampling_settings import DEFAULT_SCALES

N_ROWS = 5  # rows of the guidance batch per image
PROMPT_ROWS = 2  # rows 3-4 alone: what the editing mask's difference needs (branch_difference)


@dataclass(frozen=True)
class GuidanceScales:
    """(s_s, s_im, s_p): weights of the spatial, image and text conditions, nested s → im → p."""

    s_s: float = DEFAULT_SCALES["s_s"]
    s_im: float = DEFAULT_SCALES["s_im"]
    s_p: float = DEFAULT_SCALES["s_p"]

    def __post_init__(self):
        from pedit.validate import check_number

        for name in ("s_s", "s_im", "s_p"):  # any finite weight is a guidance choice; NaN/inf are not
            check_number(name, getattr(self, name))


def multi_cfg(e_none, e_s, e_s_im, e_full, scales: GuidanceScales):
    """Eq. 1 extended to three nested conditions.

    eps~ = e(∅,∅,∅) + s_s [e(s,∅,∅) − e(∅,∅,∅)] + s_im [e(s,im,∅) − e(s,∅,∅)] + s_p [e(s,im,p) − e(s,im,∅)]
    All arguments (B, 4, h, w). With every scale 1 the sum telescopes to e_full.
    """
    return (
        e_none
        + scales.s_s * (e_s - e_none)
        + scales.s_im * (e_s_im - e_s)
        + scales.s_p * (e_full - e_s_im)
    )


def masked_two_branch(eps_b, eps_a, mask):
    """Eq. 3: eps^ = M ⊙ eps~(p_b) + (1 − M) ⊙ eps~(p_a).

    eps_b, eps_a: (B, 4, h, w); mask: (B, 1, h, w) in [0, 1], 1 = edit. A mask of zeros returns
    the source branch exactly (no arithmetic on it), which keeps the identity test honest.
    """
    mask = as_dtype(mask, eps_b)  # a float32 mask must not promote an fp16/bf16 prediction
    return xp_of(eps_b).where(mask > 0, mask * eps_b + (1 - mask) * eps_a, eps_a)


def split_rows(eps):
    """(5B, 4, h, w) → the five named (B, 4, h, w) terms: e_none, e_s, e_s_im, e_full_b, e_full_a."""
    return blocks(eps, N_ROWS)


def guided_eps(eps, scales: GuidanceScales, mask=None):
    """The guided noise of one step from the 5-row U-Net output.

    eps: (5B, 4, h, w). mask None → plain multi-condition CFG toward p_b (the paper's "w/o mask");
    else the masked two-branch prediction of Eq. 3. Returns (B, 4, h, w).
    """
    e_none, e_s, e_s_im, e_full_b, e_full_a = split_rows(eps)
    eps_b = multi_cfg(e_none, e_s, e_s_im, e_full_b, scales)
    if mask is None:
        return eps_b
    eps_a = multi_cfg(e_none, e_s, e_s_im, e_full_a, scales)
    return masked_two_branch(eps_b, eps_a, mask)


def unguided_eps(eps, mask=None):
    """The step's noise with every scale at 1, from the prompt rows alone.

    With s_s = s_im = s_p = 1, `multi_cfg` telescopes to its fully conditioned term, so eps~(p) =
    e(s, im, p): a step outside the guidance interval (EditOptions.guidance_interval) needs row 3
    (mask None: eps (B, 4, h, w) = e(s,im,p_b)) or rows 3-4 ((2B, 4, h, w) [e(s,im,p_b); e(s,im,p_a)],
    then Eq. 3 as in a guided step). Equal to `guided_eps` at unit scales up to float rounding.
    """
    if mask is None:
        return eps
    e_b, e_a = blocks(eps, PROMPT_ROWS)
    return masked_two_branch(e_b, e_a, mask)


def branch_eps(eps, scales: GuidanceScales):
    """Both guided branches (eps~(p_b), eps~(p_a)) from the 5-row output; used for the editing mask."""
    e_none, e_s, e_s_im, e_full_b, e_full_a = split_rows(eps)
    return multi_cfg(e_none, e_s, e_s_im, e_full_b, scales), multi_cfg(e_none, e_s, e_s_im, e_full_a, scales)


def branch_difference(eps, scales: GuidanceScales, guided: bool = False):
    """eps~(p_b) − eps~(p_a) from rows 3-4 alone: (2B, 4, h, w) [e(s,im,p_b); e(s,im,p_a)] → (B, 4, h, w) float32.

    Exact, not an approximation: the two branches of Eq. 3 share rows 0-2, and `multi_cfg` is
    linear with weight s_p on its last term, so in the difference everything but that term cancels:
        eps~(p_b) − eps~(p_a) = s_p [e(s,im,p_b) − e(s,im,p_a)].
    Computed in float32 (the 5-row form subtracted two guided sums in the model's precision).
    guided=True: the two rows are already eps~(p_b), eps~(p_a) (a distilled student's, pedit.model.distilled),
    and their difference is taken as it is.
    """
    e_b, e_a = blocks(eps, PROMPT_ROWS)
    xp = xp_of(eps)
    diff = xp.astype(e_b, xp.float32) - xp.astype(e_a, xp.float32)
    return diff if guided else scales.s_p * diff
