"""The U-Net rows an edit's steps evaluate: how many, which steps take fewer (outside the guidance
interval), and the edit's sampling loop over them, for an MCDM (5 rows a guided step) and for a
guidance-distilled student (1 row a branch, pedit.model.distilled).

Editor.edit, `pedit eval` and `pedit bench` all sample through `sample_edit`, so the three run one code path.
"""

from __future__ import annotations

from pedit.edit.guidance import N_ROWS, PROMPT_ROWS, guided_eps, unguided_eps
from pedit.edit.sampler import PlainSteps, sample
from pedit.model.conditions import EditConditions
from pedit.model.sampling_settings import guided_at


def plain_steps(cond: EditConditions, mask, interval, scheduler) -> PlainSteps | None:
    """The steps outside `interval` (noise levels t / T): row 3, or rows 3-4 with a mask, at unit scales."""
    if interval is None:
        return None
    total = int(scheduler.config.num_train_timesteps)
    c_s_rows, context, rows, guide = prompt_step(cond, mask)
    return PlainSteps(is_plain=lambda t: not guided_at(t, interval, total), c_s_rows=c_s_rows, context=context,
                      rows=rows, guide=guide)


def prompt_step(cond: EditConditions, mask):
    """(c_s rows, contexts, rows, guide) of a step on the prompt rows alone: row 3, or rows 3-4 and
    Eq. 3 with a mask. A step at unit scales, or a distilled student's step (its rows are guided)."""
    c_s_rows, context = cond.prompt_rows()  # [p_b; p_a] block-wise
    if mask is None:  # the p_a branch is only Eq. 3's: without a mask, row 3 alone
        n = cond.c_s.shape[0]
        return c_s_rows[:n], context[:n], 1, lambda eps: eps
    return c_s_rows, context, PROMPT_ROWS, lambda eps: unguided_eps(eps, mask)


def sample_edit(denoise, scheduler, z_T, cond: EditConditions, scales, mask, steps: int, interval=None,
                distilled: bool = False, callback=None):
    """An edit's denoising loop from z_T (B, 4, h, w): each guided step the 5-row nested CFG (Eq. 3
    under `mask` (B, 1, h, w), else toward p_b), or for a distilled student its prompt rows at
    `scales` (the scale token, pedit.model.distilled.with_scales); steps outside `interval` at unit scales."""
    from pedit.model.distilled import with_scales

    if distilled:
        c_s_rows, context, rows, guide = prompt_step(with_scales(cond, scales), mask)
        plain = plain_steps(with_scales(cond, (1.0, 1.0, 1.0)), mask, interval, scheduler)
    else:
        (c_s_rows, context), rows = cond.guidance_rows(), N_ROWS
        guide = lambda eps: guided_eps(eps, scales, mask)  # noqa: E731
        plain = plain_steps(cond, mask, interval, scheduler)
    return sample(denoise, scheduler, z_T, c_s_rows, context, guide, steps, callback, rows=rows, plain=plain)


def edit_rows(options, scheduler, distilled: bool = False) -> int:
    """U-Net rows one edit with `options` (pedit.edit.editor.EditOptions) evaluates: 2 a mask draw
    (rows 3-4, pedit.edit.mask), then 5 a guided step, and outside the guidance interval 2 a step
    (1 without the mask). A distilled student: 2 a mask draw, and 2 every step (1 without the mask)."""
    from pedit.edit.sampler import check_steps

    check_steps(options.steps, scheduler)
    scheduler.set_timesteps(options.steps, device="cpu")
    total = int(scheduler.config.num_train_timesteps)
    masked = options.use_mask or options.user_mask is not None  # either mask makes Eq. 3's two branches
    plain = PROMPT_ROWS if masked else 1
    guided = plain if distilled else N_ROWS
    steps = sum(guided if guided_at(t, options.guidance_interval, total) else plain for t in scheduler.timesteps)
    return (PROMPT_ROWS * options.mask.n_noise if options.use_mask else 0) + steps
