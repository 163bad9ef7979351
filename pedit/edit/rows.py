"""The U-Net rows of an edit, per kind of model: the row builders the edit job (pedit.edit.job) asks.

    TeacherRows   an MCDM: 5 rows a guided step (nested CFG, Eq. 1 and 3, pedit.edit.guidance), rows 3-4
                  a mask draw, and outside the guidance interval rows 3-4 at unit scales (row 3 without a mask)
    StudentRows   a guidance-distilled student (pedit distill): its prompt rows carry the scales as a
                  context token (pedit.model.distilled.with_scales), 2 rows a masked step, 1 without

`rows_for(meta)` picks the builder from the model folder's pedit.json, so the job, the sampler and
the mask never ask which kind of model they run. `edit_rows` counts what an edit costs.
"""

from __future__ import annotations

from pedit.edit.guidance import N_ROWS, PROMPT_ROWS, branch_difference, guided_eps, unguided_eps
from pedit.edit.steps import RowPlan, StepRows
from pedit.model.sampling_settings import guided_at


def prompt_step(cond, mask) -> StepRows:
    """A step on the prompt rows alone: row 3, or rows 3-4 and Eq. 3 with a mask (B, 1, h, w). A step
    at unit scales, or a distilled student's step (its rows are guided)."""
    c_s_rows, context = cond.prompt_rows()  # [p_b; p_a] block-wise
    if mask is None:  # the p_a branch is only Eq. 3's: without a mask, row 3 alone
        n = cond.c_s.shape[0]
        return StepRows(c_s_rows[:n], context[:n], 1, lambda eps: eps)
    return StepRows(c_s_rows, context, PROMPT_ROWS, lambda eps: unguided_eps(eps, mask))


def _is_guided(interval, scheduler):
    if interval is None:
        return None
    total = int(scheduler.config.num_train_timesteps)
    return lambda t: guided_at(t, interval, total)


class TeacherRows:
    """An MCDM's rows (DESIGN: "Guidance"): every term of both branches of Eq. 3 in one 5-row call."""

    distilled = False

    def mask_conditions(self, cond, scales):
        return cond

    def difference(self, eps, scales):
        """eps~(p_b) − eps~(p_a) from rows 3-4 (2B, 4, h, w): s_p [e(s,im,p_b) − e(s,im,p_a)], float32."""
        return branch_difference(eps, scales)

    def plan(self, cond, scales, mask, interval, scheduler) -> RowPlan:
        """The sampler's rows: the 5-row nested CFG (Eq. 3 under `mask`, else toward p_b) on guided steps,
        the prompt rows at unit scales outside `interval`."""
        c_s_rows, context = cond.guidance_rows()
        guided = StepRows(c_s_rows, context, N_ROWS, lambda eps: guided_eps(eps, scales, mask))
        plain = None if interval is None else prompt_step(cond, mask)
        return RowPlan(guided, plain, _is_guided(interval, scheduler))


class StudentRows:
    """A guidance-distilled student's rows: one per branch, the scales riding on c_im as a context token."""

    distilled = True

    def mask_conditions(self, cond, scales):
        from pedit.model.distilled import with_scales

        return with_scales(cond, scales)

    def difference(self, eps, scales):
        """The student's two rows are eps~(p_b), eps~(p_a) already: their difference as it is."""
        return branch_difference(eps, scales, guided=True)

    def plan(self, cond, scales, mask, interval, scheduler) -> RowPlan:
        from pedit.model.distilled import with_scales

        guided = prompt_step(with_scales(cond, scales), mask)
        plain = None if interval is None else prompt_step(with_scales(cond, (1.0, 1.0, 1.0)), mask)
        return RowPlan(guided, plain, _is_guided(interval, scheduler))


def rows_for(meta: dict):
    """The row builder of a model folder: a student's when pedit.json says "distilled", else a teacher's."""
    return StudentRows() if meta.get("distilled") is not None else TeacherRows()


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
