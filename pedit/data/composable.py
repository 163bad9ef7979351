"""Composable side-by-side guidance for gen-pairs (paper §3.2, Eq. 2).

One latent of h × 2w holds both halves of a pair, x = [x_A, x_B]. Each step, one U-Net call on a
batch of 4 rows per pair gives every term (docs/design-notes.md, "gen-pairs"):

    row 0  e(∅)            unconditional:  empty prompt, null identity
    row 1  e(p, id)        shared prompt   "the same woman on the left and right"
    row 2  e(p_a, id)      source prompt   "a woman, everyday clothes"
    row 3  e(p_b, id)      target prompt   "a woman, santa claus costume"

Each conditioned term is classifier-free guided against row 0, then (Eq. 2)

    eps_bar = s'_d · eps~(p, id) + s'_a · M'_a ⊙ eps~(p_a, id) + s'_b · M'_b ⊙ eps~(p_b, id)

with M'_a = [1, 0] (ones on the left w latent columns) and M'_b = [0, 1]. Rows are laid out
block-wise, (4B, ...) = 4 blocks of B, so `chunk(4)` splits them. The twin of pedit.edit.guidance
for Eq. 1 and 3; like it, these functions know no backend and no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pedit.errors import ConfigError
from pedit.validate import check_number

N_TERMS = 4  # rows of the Eq. 2 batch per pair


@dataclass(frozen=True)
class PairStrengths:
    """The strengths of Eq. 2 and the classifier-free guidance scale each term is guided with.

    The paper gives no values. Default: s'_d + s'_a = s'_d + s'_b = 1, so each half's noise is a
    convex mix of the shared and its own prediction (Composable Diffusion's weights sum the same way).
    """

    s_d: float = 0.3  # shared prompt p, both halves
    s_a: float = 0.7  # source prompt p_a, left half
    s_b: float = 0.7  # target prompt p_b, right half
    cfg: float = 7.5  # classifier-free guidance of each term (SD's usual)

    def __post_init__(self):
        for name in ("s_d", "s_a", "s_b", "cfg"):
            check_number(name, getattr(self, name), 0)
        if self.s_d == self.s_a == self.s_b == 0:
            raise ConfigError("s_d, s_a and s_b are all 0: the prediction would be zero noise.")


def side_masks(width: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """M'_a, M'_b of Eq. 2 for a latent 2w columns wide: (1, 1, 1, 2w) each, split exactly at w."""
    if width % 2:
        raise ValueError(f"the side-by-side latent must have an even width, got {width}")
    m_a = torch.zeros(1, 1, 1, width, device=device, dtype=dtype)
    m_a[..., : width // 2] = 1
    return m_a, 1 - m_a


def cfg(e_uncond, e_cond, scale: float):
    """Classifier-free guidance: e(∅) + scale · (e(c) − e(∅)). Both (B, 4, h, 2w)."""
    return e_uncond + scale * (e_cond - e_uncond)


def composable_eps(e_uncond, e_p, e_pa, e_pb, strengths: PairStrengths, guide=None):
    """Eq. 2 from the four named terms, each (B, 4, h, 2w). Returns (B, 4, h, 2w).

    `guide(e_c)` guides one conditioned term; default one CFG against e_uncond (text and identity
    together). A strength of 0 drops its term without arithmetic on it (so only s'_a > 0 leaves
    the right half exactly zero: it follows no prompt).
    """
    guide = guide or (lambda e_c: cfg(e_uncond, e_c, strengths.cfg))
    m_a, m_b = side_masks(e_p.shape[-1], e_p.device, e_p.dtype)  # (1, 1, 1, 2w)
    eps = torch.zeros_like(e_p)
    if strengths.s_d:
        eps = eps + strengths.s_d * guide(e_p)
    if strengths.s_a:
        eps = eps + strengths.s_a * m_a * guide(e_pa)
    if strengths.s_b:
        eps = eps + strengths.s_b * m_b * guide(e_pb)
    return eps


def split_terms(eps):
    """(4B, 4, h, 2w) → the four named (B, 4, h, 2w) terms: e_uncond, e_p, e_pa, e_pb."""
    return eps.chunk(N_TERMS, dim=0)


def nested_cfg(e_0, e_id, e_c, s_id: float, scale: float):
    """Paper Eq. 1's nesting for one term (identity first, then text), each (B, 4, h, 2w):
    e_0 + s_id [e(∅, id) − e_0] + s [e(c, id) − e(∅, id)]; s_id = s is the single CFG."""
    return e_0 + s_id * (e_id - e_0) + scale * (e_c - e_id)


def pair_eps(eps, strengths: PairStrengths, identity_guidance: float | None = None):
    """The noise of one step from the U-Net output: (4B, 4, h, 2w) → (B, 4, h, 2w); with
    `identity_guidance` (the nested form, s_id), 5 row blocks [∅∅, ∅·id, p, p_a, p_b] → (B, 4, h, 2w)."""
    if identity_guidance is None:
        return composable_eps(*split_terms(eps), strengths)
    e_0, e_id, e_p, e_pa, e_pb = eps.chunk(N_TERMS + 1, dim=0)
    return composable_eps(e_0, e_p, e_pa, e_pb, strengths,
                          guide=lambda e_c: nested_cfg(e_0, e_id, e_c, identity_guidance, strengths.cfg))
