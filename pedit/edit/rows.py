"""How many U-Net rows an edit's steps take, and which steps take fewer (outside the guidance interval)."""

from __future__ import annotations

from pedit.edit.guidance import N_ROWS, PROMPT_ROWS, unguided_eps
from pedit.edit.sampler import PlainSteps
from pedit.model.conditions import EditConditions
from pedit.model.sampling_settings import guided_at


def plain_steps(cond: EditConditions, mask, interval, scheduler) -> PlainSteps | None:
    """The steps outside `interval` (noise levels t / T): row 3, or rows 3-4 with a mask, at unit scales."""
    if interval is None:
        return None
    total = int(scheduler.config.num_train_timesteps)
    c_s_rows, context = cond.prompt_rows()  # [p_b; p_a] block-wise
    if mask is None:  # the p_a branch is only Eq. 3's: without a mask, row 3 alone
        n = cond.c_s.shape[0]
        c_s_rows, context = c_s_rows[:n], context[:n]
    return PlainSteps(is_plain=lambda t: not guided_at(t, interval, total), c_s_rows=c_s_rows, context=context,
                      rows=1 if mask is None else PROMPT_ROWS, guide=lambda eps: unguided_eps(eps, mask))


def edit_rows(options, scheduler) -> int:
    """U-Net rows one edit with `options` (pedit.edit.editor.EditOptions) evaluates: 2 a mask draw (rows 3-4, pedit.edit.mask), then
    5 a guided step, and outside the guidance interval 2 a step (1 without the mask)."""
    from pedit.edit.sampler import check_steps

    check_steps(options.steps, scheduler)
    scheduler.set_timesteps(options.steps, device="cpu")
    total = int(scheduler.config.num_train_timesteps)
    masked = options.use_mask or options.user_mask is not None  # either mask makes Eq. 3's two branches
    plain = PROMPT_ROWS if masked else 1
    steps = sum(N_ROWS if guided_at(t, options.guidance_interval, total) else plain for t in scheduler.timesteps)
    return (PROMPT_ROWS * options.mask.n_noise if options.use_mask else 0) + steps
