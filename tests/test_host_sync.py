"""No device-to-host sync per sampling step (issue 17, item 6): the schedule stays on the host, the U-Net
gets its timestep on the latent's device. On the CPU the `meta` device stands in for a GPU (a tensor
there has no value the host could read); the CUDA test runs under torch.cuda.set_sync_debug_mode."""

import pytest
import torch

from pedit.edit.sampler import make_scheduler, sample

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


class _Stop(Exception):
    pass


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

    def stop_after_two(z, t):
        assert _host(t)
        if len(unet_t) == 2:
            raise _Stop  # two steps seen; the end's finiteness check cannot read a meta tensor
        return z

    z = torch.empty(1, 4, 8, 8, device="meta")
    with pytest.raises(_Stop):
        sample(denoise, scheduler, z, torch.empty(5, 4, 8, 8, device="meta"), torch.empty(5, 7, 16, device="meta"),
               lambda eps: eps[:1], num_steps=4, after_step=stop_after_two)
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
    steps = []

    def stop(z_next, t):
        steps.append(z_next)
        if len(steps) == 2:
            raise _Stop
        return z_next

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
    try:
        with pytest.raises(_Stop):
            sample(denoise, scheduler, z, c_s, ctx, lambda eps: eps[:1], num_steps=4, after_step=stop)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(calls) == 2
