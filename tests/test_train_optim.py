"""--optimizer adafactor and --ema-decay 0: the two settings that let SD 1.5-size training fit a 24 GB machine
(pedit.train.optim; docs/deployment.md "SD 1.5 dry run")."""

import pytest
import torch
from safetensors.torch import load_file

from pedit.errors import ConfigError
from pedit.train.loop import TrainConfig, train
from pedit.train.optim import NoEMA, make_ema, make_optimizer


def _state_numel(optimizer) -> int:
    return sum(v.numel() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())


def test_adafactor_keeps_a_fraction_of_adamws_state_and_still_descends():
    torch.manual_seed(0)
    x, y = torch.randn(64, 96), torch.randn(64, 128)
    sizes = {}
    for name in ("adamw", "adafactor"):
        torch.manual_seed(1)
        net = torch.nn.Linear(96, 128)
        opt = make_optimizer(name, net.parameters(), 1e-2)
        first = None
        for _ in range(20):
            loss = torch.nn.functional.mse_loss(net(x), y)
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first  # it optimises
        sizes[name] = _state_numel(opt)
    n_params = 96 * 128 + 128
    assert sizes["adamw"] == 2 * n_params  # exp_avg and exp_avg_sq
    assert sizes["adafactor"] < 0.1 * n_params  # factored row and column second moments


def test_ema_decay_zero_keeps_no_copy_and_diffusers_ema_agrees_it_is_the_weights():
    from diffusers.training_utils import EMAModel

    net = torch.nn.Linear(4, 4)
    assert isinstance(make_ema(net.parameters(), 0.0), NoEMA)
    assert isinstance(make_ema(net.parameters(), 0.5), EMAModel)
    oracle = EMAModel(net.parameters(), decay=0.0)
    with torch.no_grad():
        net.weight.add_(1.0)
    oracle.step(net.parameters())
    assert torch.equal(oracle.shadow_params[0], net.weight)  # what NoEMA stands for


def _cfg(pairs, base, out, **kw):
    return TrainConfig(**{**dict(data=str(pairs), output=str(out), base=str(base), batch_size=2, checkpoint_every=2,
                                 validate_every=0, learning_rate=1e-3, log_every=1, cache_dir=str(out.parent / "cache")),
                          **kw})


def _unet(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_adafactor_without_ema_trains_and_resumes_exactly(tiny_pairs, tiny_base, tmp_path):
    settings = dict(optimizer="adafactor", ema_decay=0.0)
    straight = _unet(train(_cfg(tiny_pairs, tiny_base, tmp_path / "straight", max_steps=4, **settings)))
    split = tmp_path / "split"
    train(_cfg(tiny_pairs, tiny_base, split, max_steps=2, **settings))
    resumed = _unet(train(_cfg(tiny_pairs, tiny_base, split, max_steps=4, resume=True, **settings)))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    adamw = _unet(train(_cfg(tiny_pairs, tiny_base, tmp_path / "adamw", max_steps=4, ema_decay=0.0)))
    assert any(not torch.equal(straight[k], adamw[k]) for k in straight)  # the setting reaches the loop


def test_an_unknown_optimizer_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="optimizer must be adamw or adafactor"):
        TrainConfig(data="d", output=str(tmp_path / "o"), optimizer="sgd")
