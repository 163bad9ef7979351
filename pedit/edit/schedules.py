"""DDIM sampling and DDPM noising without importing diffusers (which costs seconds: it pulls torch._dynamo).

`pedit edit` on the CPU spends more time importing diffusers than editing (docs/deployment.md, "CPU cold
start"). Its scheduler needs are small: DDIM with eta = 0 (the default sampler) and DDPM's `add_noise`
(the editing mask). These classes repeat diffusers' arithmetic operation for operation, on the same
0-dim float32 tensors, so their results are bit-identical to `diffusers.DDIMScheduler` /
`DDPMScheduler` (tests/test_coldstart.py compares them over whole schedules). A config they do not
cover (other beta schedules, v-prediction, clipping, thresholding, ...) gets the diffusers class.

The light classes are array-generic (pedit.arrays): given their alphas_cumprod table as a numpy array
(the table torch computed, stored by the export), the torch-free runtime steps numpy latents with the
same expressions. torch is imported only to compute the table for the torch path.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from pedit.arrays import is_torch_array, xp_of

# Config values under which the light classes match diffusers exactly; any other value → diffusers.
# Noising reads only the beta schedule; sampling also the step rule.
_NOISE_SUPPORTED = {"beta_schedule": ("linear", "scaled_linear"), "trained_betas": (None,), "rescale_betas_zero_snr": (False,)}
_STEP_SUPPORTED = {
    "timestep_spacing": ("leading", "trailing", "linspace"),
    "prediction_type": ("epsilon",),
    "thresholding": (False,),
    "clip_sample": (False,),
}
_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
             "trained_betas": None, "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon",
             "timestep_spacing": "leading", "rescale_betas_zero_snr": False, "thresholding": False,
             "clip_sample": True}


def _light_config(config: dict, sampling: bool) -> SimpleNamespace | None:
    """The fields the light classes read, or None when `config` asks for anything they do not do."""
    merged = {**_DEFAULTS, **{k: v for k, v in config.items() if k in _DEFAULTS}}
    supported = {**_NOISE_SUPPORTED, **(_STEP_SUPPORTED if sampling else {})}
    for key, allowed in supported.items():
        if merged[key] not in allowed:
            return None
    if not isinstance(merged["num_train_timesteps"], int) or merged["num_train_timesteps"] < 1:
        return None
    return SimpleNamespace(**merged)


def _alphas_cumprod(cfg: SimpleNamespace):
    """(T,) float32 torch tensor, as diffusers' DDIM/DDPM __init__ computes it."""
    import torch

    if cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=torch.float32)
    else:  # scaled_linear, the Stable Diffusion schedule
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass
class _Step:
    prev_sample: torch.Tensor


class LightDDPMNoise:
    """DDPMScheduler's `add_noise` (all that the editing mask uses) and its `config.num_train_timesteps`."""

    def __init__(self, cfg: SimpleNamespace, alphas_cumprod=None):
        """alphas_cumprod: the (T,) float32 table as a numpy array (the torch-free runtime's, from the
        export); None computes it with torch, as diffusers does."""
        self.config = cfg
        self.alphas_cumprod = _alphas_cumprod(cfg) if alphas_cumprod is None else alphas_cumprod

    def add_noise(self, original_samples, noise, timesteps):
        xp = xp_of(original_samples)
        if is_torch_array(original_samples):
            alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device).to(dtype=original_samples.dtype)
            timesteps = timesteps.to(original_samples.device)
        else:
            alphas_cumprod = xp.astype(xp.asarray(self.alphas_cumprod), original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)  # (B, 1, 1, 1): one level per sample
        sqrt_alpha_prod = xp.reshape(alphas_cumprod[timesteps] ** 0.5, shape)
        sqrt_one_minus_alpha_prod = xp.reshape((1 - alphas_cumprod[timesteps]) ** 0.5, shape)
        return sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise


class LightDDIM(LightDDPMNoise):
    """DDIMScheduler with eta = 0, epsilon prediction, no clipping: what `pedit edit` samples with."""

    init_noise_sigma = 1.0

    def __init__(self, cfg: SimpleNamespace, alphas_cumprod=None):
        super().__init__(cfg, alphas_cumprod)
        one = self.alphas_cumprod[0] * 0 + 1  # 1.0 as a 0-d float32 of the table's library
        self.final_alpha_cumprod = one if cfg.set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = self._host(np.arange(0, cfg.num_train_timesteps)[::-1].copy().astype(np.int64))

    def _host(self, timesteps: np.ndarray):
        """Host timesteps in the table's library (a torch tensor for the torch path)."""
        if is_torch_array(self.alphas_cumprod):
            import torch

            return torch.from_numpy(timesteps)
        return timesteps

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        cfg = self.config
        if num_inference_steps > cfg.num_train_timesteps:
            raise ValueError(f"{num_inference_steps} steps is more than the {cfg.num_train_timesteps} training timesteps")
        self.num_inference_steps = num_inference_steps
        if cfg.timestep_spacing == "linspace":
            timesteps = np.linspace(0, cfg.num_train_timesteps - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            step_ratio = cfg.num_train_timesteps // num_inference_steps
            timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
            timesteps += cfg.steps_offset
        else:  # trailing
            step_ratio = cfg.num_train_timesteps / num_inference_steps
            timesteps = np.round(np.arange(cfg.num_train_timesteps, 0, -step_ratio)).astype(np.int64)
            timesteps -= 1
        # On the host whatever `device` says: `step` indexes the host table with it and branches on it,
        # which for a GPU tensor would be a device-to-host sync every step. diffusers' DDIM gives
        # the same values on the device asked for; the sampler asks for the host (pedit.edit.sampler).
        self.timesteps = self._host(timesteps)

    def scale_model_input(self, sample, timestep=None):
        return sample

    def step(self, model_output, timestep, sample) -> _Step:
        # timestep: an int or a 0-d host tensor (set_timesteps keeps them on the host); the table's
        # values are 0-d host tensors, which combine with a GPU sample without a sync.
        # The same expressions, in the same order, as DDIMScheduler.step with eta = 0 (std_dev_t = 0).
        prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        std_dev_t = 0.0 * self._variance(alpha_prod_t, alpha_prod_t_prev) ** (0.5)
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** (0.5) * model_output
        return _Step(alpha_prod_t_prev ** (0.5) * pred_original_sample + pred_sample_direction)

    @staticmethod
    def _variance(alpha_prod_t, alpha_prod_t_prev):
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)


def ddim_scheduler(config: dict, alphas_cumprod=None):
    """DDIM for `config` (a diffusers scheduler config): the light class when it covers it, else diffusers'.
    alphas_cumprod: a numpy table (the torch-free runtime's), which only the light class takes."""
    cfg = _light_config(config, sampling=True)
    if cfg is not None:
        return LightDDIM(cfg, alphas_cumprod)
    if alphas_cumprod is not None:
        from pedit.errors import ConfigError

        raise ConfigError("This model's noise schedule needs diffusers' DDIM (torch); the torch-free runtime "
                          "samples linear and scaled-linear epsilon schedules only.")
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config)


def noise_scheduler(config: dict, alphas_cumprod=None):
    """What the editing mask noises with: DDPM `add_noise` for `config`, light when it covers it."""
    cfg = _light_config(config, sampling=False)
    if cfg is not None:
        return LightDDPMNoise(cfg, alphas_cumprod)
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config)
