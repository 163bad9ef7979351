"""The baselines `pedit eval` scores the MCDM against, each its own small function over the editor's parts.

Both read the MCDM as a text-to-image model: c_s and c_im dropped (zeros), the nested CFG toward p_b.

    sdedit     SDEdit (Meng et al. 2022): x_A's latent noised to `strength`, then denoised toward p_b
    diffedit   DiffEdit (Couairon et al. 2023): a text-only editing mask, then the noised source kept
               outside it after every step

They step the same SampleJob the edit does (pedit.edit.steps): DDIM, every step guided (the paper's
settings for the baselines), the model's `denoise` whatever its backend.
"""

from __future__ import annotations

import dataclasses

from pedit.edit.guidance import guided_eps
from pedit.edit.sampler import make_scheduler
from pedit.edit.steps import RowPlan, SampleJob, StepRows, run


def text_only(cond):
    """Both image conditions dropped (their null value, zeros): the MCDM as a text-to-image model."""
    return drop(cond, c_s=True, c_im=True)


def drop(cond, c_s: bool = False, c_im: bool = False):
    """The conditions with c_s and/or c_im replaced by their null value (zeros)."""
    import torch

    return dataclasses.replace(cond, c_s=torch.zeros_like(cond.c_s) if c_s else cond.c_s,
                               c_im=torch.zeros_like(cond.c_im) if c_im else cond.c_im)


def _job(editor, cond, noise, steps: int, scales, strength: float) -> SampleJob:
    """DDIM toward p_b on the text-only rows, from c_s = E(x_A) noised with `noise` to `strength`."""
    scheduler = make_scheduler("ddim", editor.model.parts.scheduler_config)
    rows = text_only(cond).guidance_rows()
    plan = RowPlan(StepRows(*rows, 5, lambda e: guided_eps(e, scales)))
    return SampleJob(scheduler, noise, plan, steps, start=cond.c_s, strength=strength)


def sdedit(editor, cond, noise, steps: int, scales, strength: float):
    """SDEdit's clean latent (B, 4, h, w): `strength` of the schedule from E(x_A) noised."""
    job = _job(editor, cond, noise, steps, scales, strength)
    run([job], editor.denoise)
    return job.z


def diffedit(editor, cond, noise, steps: int, scales, mask, ddpm):
    """DiffEdit's clean latent (B, 4, h, w): SDEdit at 0.5 where after each step the latent outside
    `mask` (B, 1, h, w) is replaced by the source noised to the next step's level."""
    job = _job(editor, cond, noise, steps, scales, 0.5)
    m = mask.to(cond.c_s.dtype)  # the float32 mask must not promote a reduced-precision latent
    while not job.done:
        t = job.timesteps[job.i]
        rows = job.rows()
        job.advance(editor.denoise(rows.z_in, rows.t, rows.context))
        prev = t - job.scheduler.config.num_train_timesteps // job.scheduler.num_inference_steps
        source = cond.c_s if prev < 0 else ddpm.add_noise(cond.c_s, noise, prev.view(1))
        job.z = m * job.z + (1 - m) * source
    return job.z
