"""What one edit conditions on (paper §3.3): c_s, c_im and the three prompt embeddings, as the 5 guidance rows.

Array-generic (pedit.arrays): torch tensors for the eager and TorchScript paths, numpy arrays for the
torch-free runtime. No diffusers: the editing path imports this even when the model runs from its
TorchScript cache (pedit.model.traced), where importing diffusers would cost more than the edit.
"""

from __future__ import annotations

from dataclasses import dataclass

from pedit.arrays import cat, xp_of


@dataclass
class EditConditions:
    """Everything one edit conditions on, for B images. Shapes in comments."""

    c_s: object  # (B, 4, h, w)
    c_im: object  # (B, K, D)
    c_p_b: object  # (B, 77, D) target prompt
    c_p_a: object  # (B, 77, D) source prompt
    c_p_null: object  # (B, 77, D) empty prompt

    def guidance_rows(self):
        """The 5-row layout of pedit.edit.guidance: c_s rows (5B, 4, h, w) and contexts (5B, 77 + K, D).

        Rows: [∅∅∅, s∅∅, s·im·∅, s·im·p_b, s·im·p_a], block-wise (5 blocks of B).
        """
        xp = xp_of(self.c_s)
        zeros_s = xp.zeros_like(self.c_s)
        zeros_im = xp.zeros_like(self.c_im)
        c_s_rows = cat([zeros_s, self.c_s, self.c_s, self.c_s, self.c_s])
        context = cat(
            [
                cat([self.c_p_null, zeros_im], axis=1),
                cat([self.c_p_null, zeros_im], axis=1),
                cat([self.c_p_null, self.c_im], axis=1),
                cat([self.c_p_b, self.c_im], axis=1),
                cat([self.c_p_a, self.c_im], axis=1),
            ]
        )
        return c_s_rows, context

    def prompt_rows(self):
        """Rows 3-4 of the guidance layout alone, all the editing mask needs (pedit.edit.mask):
        c_s rows (2B, 4, h, w) and contexts (2B, 77 + K, D), [s·im·p_b, s·im·p_a] block-wise."""
        c_s_rows = cat([self.c_s, self.c_s])
        context = cat([cat([self.c_p_b, self.c_im], axis=1), cat([self.c_p_a, self.c_im], axis=1)])
        return c_s_rows, context
