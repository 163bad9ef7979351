"""No device-to-host sync per sampling step (issue 17, item 6): the schedule stays on the host, the U-Net
gets its timestep on the latent's device. On the CPU the `meta` device stands in for a GPU (a tensor
there has no value the host could read); the CUDA test runs under torch.cuda.set_sync_debug_mode."""

import pytest
import torch

from pedit.edit.sampler import make_scheduler
from pedit.edit.steps import RowPlan, SampleJob, StepRows

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


class Recording:
    """Wraps a scheduler and records the timestep every step function is given."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def scale_model_input(self, sample, timestep=None):
        self.seen.append(("scale_model_input", timestep))
        return self.inner.scale_model_input(sample, timestep)

    def step(self, model_output, timestep, sample):
        self.seen.append(("step", timestep))
        return self.inner.step(model_output, timestep, sample)


def _host(t) -> bool:
    return not isinstance(t, torch.Tensor) or t.device.type == "cpu"


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm"])
def test_step_functions_see_host_timesteps_and_the_unet_the_latents_device(name):
    scheduler = Recording(make_scheduler(name, SCHEDULE))
    unet_t = []

    def denoise(z_in, t, context):
        unet_t.append(t)
        return torch.zeros_like(z_in[:, :4])

    z = torch.empty(1, 4, 8, 8, device="meta")
    job = SampleJob(scheduler, z, RowPlan(StepRows(torch.empty(5, 4, 8, 8, device="meta"),
                                                   torch.empty(5, 7, 16, device="meta"), 5, lambda eps: eps[:1])), 4)
    for _ in range(2):  # two of the four steps: the end's finiteness check cannot read a meta tensor
        rows = job.rows()
        job.advance(denoise(rows.z_in, rows.t, rows.context))
    assert [kind for kind, _ in scheduler.seen] == ["scale_model_input", "step"] * 2
    assert all(_host(t) for _, t in scheduler.seen), scheduler.seen
    assert all(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in unet_t)


def test_light_ddim_keeps_its_schedule_on_the_host_whatever_device_is_asked():
    scheduler = make_scheduler("ddim", SCHEDULE)
    scheduler.set_timesteps(10, device="meta")
    assert scheduler.timesteps.device.type == "cpu" and scheduler.alphas_cumprod.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.set_sync_debug_mode)")
def test_a_sampling_step_on_cuda_makes_no_device_to_host_sync(random_model):
    from pedit.edit.editor import torch_denoise
    from pedit.model.loading import load_model

    model = load_model(random_model, device="cuda")
    denoise = torch_denoise(model.mcdm)
    scheduler = make_scheduler("ddim", SCHEDULE)
    h = model.resolution // model.parts.latent_factor
    g = torch.Generator("cuda").manual_seed(0)
    z = torch.randn(1, 4, h, h, device="cuda", generator=g)
    c_s = torch.randn(5, 4, h, h, device="cuda", generator=g)
    ctx = torch.randn(5, 77 + model.parts.num_image_tokens, model.parts.text_encoder.config.hidden_size,
                      device="cuda", generator=g)

    denoise(torch.cat([z.repeat(5, 1, 1, 1), c_s], 1), torch.tensor(999, device="cuda"), ctx)  # warm-up: lazy inits
    torch.cuda.synchronize()
    # From the first step on: the up-front copy of the timesteps is before it (one, not one a step).
    original = scheduler.step
    calls = []

    def step(*a, **k):
        if not calls:
            torch.cuda.set_sync_debug_mode("error")
        calls.append(1)
        return original(*a, **k)

    scheduler.step = step
    job = SampleJob(scheduler, z, RowPlan(StepRows(c_s, ctx, 5, lambda eps: eps[:1])), 4)
    try:
        for _ in range(2):  # two of the four steps: the end's finiteness check syncs once, by design
            rows = job.rows()
            job.advance(denoise(rows.z_in, rows.t, rows.context))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(calls) == 2
