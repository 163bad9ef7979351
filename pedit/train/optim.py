"""The optimizer and the weight EMA of `pedit train`, chosen by the config (docs/deployment.md, "SD 1.5 dry run").

At Stable Diffusion 1.5 size the U-Net has 860M parameters: fp32 weights and gradients are 3.4 GB
each, AdamW's two moments 6.9 GB more and the EMA copy 3.4 GB. `optimizer="adafactor"` keeps
factored second moments and no first moment (a fraction of one model's size), and `ema_decay=0`
keeps no EMA copy (an EMA of decay 0 *is* the weights), which is what fits a 24 GB machine.
"""

from __future__ import annotations

OPTIMIZERS = ("adamw", "adafactor")
WEIGHT_DECAY = 1e-2


def make_optimizer(name: str, params, lr: float):
    """AdamW (the default), or transformers' Adafactor with a fixed learning rate (the schedule is the loop's)."""
    import torch

    params = list(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=WEIGHT_DECAY, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


class NoEMA:
    """The EMA of decay 0: the weights themselves, so no copy is kept (store/copy_to/restore do nothing).
    Checkpointed like EMAModel (an empty state), so a run resumes the same way."""

    def step(self, parameters) -> None:
        pass

    def store(self, parameters) -> None:
        pass

    def copy_to(self, parameters) -> None:
        pass

    def restore(self, parameters) -> None:
        pass

    def to(self, device=None, dtype=None) -> NoEMA:
        return self

    def state_dict(self) -> dict:
        return {"decay": 0.0}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_ema(parameters, decay: float):
    """diffusers' EMAModel (foreach: one batched update; it allocates a whole model's worth of temporaries
    for it, 3.4 GB at SD 1.5 size), or NoEMA for decay 0."""
    if decay == 0:
        return NoEMA()
    from diffusers.training_utils import EMAModel

    return EMAModel(parameters, decay=decay, foreach=True)
