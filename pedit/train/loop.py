"""`pedit train`: one readable accelerate loop for the MCDM (paper §3.3).

Per step, visible below: identity samples (p = 0.05: target x_A, prompt p_a), condition dropout
(p = 0.2, a uniformly drawn non-empty subset of {c_s, c_im, c_p}), the loss on the base's
prediction type (epsilon or v), EMA, checkpoints (`save_state`), validation grids. What the frozen
VAE and encoders give for each pair comes from the latent cache (pedit.train.latent_cache; `--no-cache`
computes it every step), and the loss is read back every `log_every` steps, not every step.
A step is one optimizer step: with `gradient_accumulation` k it runs k micro-batches, and max_steps,
checkpoints and loss.csv rows count optimizer steps. All randomness of a micro-batch comes from a
generator seeded by (seed, micro-batch index, rank), and the data order from per-epoch
permutations of the seed, so a resumed run continues exactly where the straight run would be
(tests check). Multi-GPU: `accelerate launch -m pedit train ...`; each rank takes its slice of the
global batch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pedit.errors import ConfigError
from pedit.noise import rand, randint, randn
from pedit.data.pairs import Pair, direction_of, load_rgb, read_pairs
from pedit.train.batches import sample_dropout, step_seed
from pedit.train.config import TrainConfig, check_output_folder, check_resume_data
from pedit.train.data_source import cache_root, data_folder
from pedit.train.progress import TrainProgress
from pedit.train.steps import StepInputs, _backward, claim_output, finish, frozen_snapshot, prepare_run, run_steps, writes_said

DROP_S, DROP_IM, DROP_P = 1, 2, 4  # bits of a dropout subset; subsets 1..7 are the non-empty ones
VALIDATION_STEPS = 20  # sampling steps of the validation grids' edits ...
VALIDATION_MASK_NOISES = 10  # ... and noise draws of their editing masks


# ---------------------------------------------------------------- targets and the frozen parts' outputs


PREDICTION_TYPES = ("epsilon", "v_prediction")


def check_prediction_type(scheduler_config) -> str:
    """The base scheduler's prediction_type, if pedit can train it: epsilon or v_prediction."""
    kind = scheduler_config.get("prediction_type", "epsilon") or "epsilon"
    if kind not in PREDICTION_TYPES:
        raise ConfigError(f"The base's scheduler predicts {kind!r}; pedit trains epsilon or v_prediction bases. "
                          "Use another base, or set prediction_type in its scheduler/scheduler_config.json.")
    return kind


def training_target(noise_scheduler, prediction_type: str, z_0, noise, t):
    """What the U-Net regresses: the noise (epsilon), or the velocity alpha_t * noise - sigma_t * z_0.

    A v_prediction base (SD 2.x 768, many fine-tunes) samples with its scheduler reading the output
    as v: training it on epsilon would teach it the wrong quantity.
    """
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(z_0, noise, t)
    return noise


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, progress: Callable[[TrainProgress], None] | None = None,
          log: Callable[[str], None] | None = None) -> Path:
    """Train an MCDM on a pair folder; returns the model folder. Only rank 0 writes and reports.

    A step is one optimizer step over `gradient_accumulation` micro-batches of `batch_size` pairs
    per process: max_steps, checkpoints, validation and loss.csv rows all count optimizer steps, so
    a checkpoint (or a --max-minutes stop) never falls between the micro-batches of a step, whose
    accumulated gradients save_state does not keep.
    """
    from accelerate import Accelerator

    from pedit.model.loading import bundled_base_path, load_base

    out = Path(cfg.output)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)  # accumulation is the loop's own, below
    check_output_folder(cfg)  # costs nothing: before the models load
    accelerator.wait_for_everyone()  # every rank has looked at the folder before rank 0 writes into it
    main = accelerator.is_main_process
    say = log if (log is not None and main) else (lambda _msg: None)
    report = progress if (progress is not None and main) else (lambda _p: None)

    # Everything that can fail on user input fails here, before the first step.
    with accelerator.main_process_first():  # a datasets source is written to a pair folder once
        data = data_folder(cfg, say, report)
    pairs = read_pairs(data)
    from pedit.train.latent_cache import data_hash

    data_fingerprint = data_hash(data, pairs)  # metadata.jsonl and every image's bytes
    if cfg.resume:
        check_resume_data(cfg, data_fingerprint)  # the checkpoint learned from these pairs, not others
    directions = _directions(pairs)
    base = cfg.base or str(bundled_base_path())
    root, parts = load_base(base, cfg.allow_pickle, cfg.image_encoder)
    size = cfg.resolution or int(parts.vae.config.sample_size)
    prediction_type = check_prediction_type(parts.scheduler_config)
    if cfg.cache and main:
        from pedit.train.latent_cache import check_writable

        check_writable(cache_root(cfg, data))
    say(f"{len(pairs)} pairs, {len(directions)} direction(s): {', '.join(sorted(directions))}; resolution {size}")

    mcdm = _models(cfg, root, parts)
    claimed = False
    if main:  # every input has loaded: only now does the output folder appear (or lose its old run)
        claimed = claim_output(cfg, out, data_fingerprint)
    fp32_parts = frozen_snapshot(parts, cfg.mixed_precision)  # the frozen parts as read now, for the save
    run, weight_dtype, noise_scheduler, frozen, micro_batches = prepare_run(
        cfg, accelerator, mcdm, parts, out, claimed, (data, pairs, size), report, say)
    mcdm, ema, accum, rank = run.model, run.ema, cfg.gradient_accumulation, accelerator.process_index
    def step_loss(step: int, k: int) -> torch.Tensor:  # micro-batch k of optimizer step `step`
        g = torch.Generator().manual_seed(step_seed(cfg.seed, step * accum + k, rank))
        inputs = _step_inputs(cfg, next(micro_batches), frozen.prompts, parts, noise_scheduler, prediction_type,
                              g, accelerator.device)
        return _backward(accelerator, mcdm, inputs, accum)

    def validation(done: int) -> Path:
        return validation_grid(accelerator.unwrap_model(mcdm), ema, parts, pairs, directions, size, out, done, cfg.seed)

    with writes_said(cfg, out, claimed):
        done = run_steps(cfg, run, step_loss, report, say, validation)

        meta = {"base": str(base), "init": cfg.init, "resolution": size, "latent_factor": parts.latent_factor,
                "directions": [directions[k] for k in sorted(directions)], "steps_trained": done,
                "prediction_type": prediction_type, "training": asdict(cfg)}
        if accelerator.device.type == "cuda":  # what a user sizing a card needs (docs/toon-model.md, "SD size")
            meta["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 2)
            say(f"peak GPU memory {meta['peak_gpu_memory_gib']} GiB (torch's allocator, this process)")
        finish(accelerator, mcdm, ema, parts, weight_dtype, out, meta, fp32_parts)
    return out


def _directions(pairs: list[Pair]) -> dict[str, dict]:
    """Each direction of the pairs (name -> its record, as pedit.json lists them)."""
    directions = {}
    for p in pairs:
        directions.setdefault(p.direction, direction_of(p))
    return directions


def _models(cfg: TrainConfig, root, parts):
    """The trainable MCDM: from a model folder (init_from), or the base's U-Net (pretrained, or its
    config with seeded random weights) widened to 8 input channels plus a fresh image projector."""
    from accelerate.utils import set_seed

    from pedit.model.loading import base_unet, check_shapes, load_model
    from pedit.model.mcdm import MCDM, ImageProjector, widen_conv_in

    set_seed(cfg.seed)  # the fresh weights (projector, scratch U-Net) are a function of the seed
    if cfg.init_from:
        # Continue from a model folder's U-Net and projector (its frozen parts must match the base's).
        mcdm = load_model(cfg.init_from, cfg.allow_pickle).mcdm
        check_shapes(mcdm, parts, Path(cfg.init_from))
        mcdm.requires_grad_(True)
    else:
        unet = widen_conv_in(base_unet(root, cfg.allow_pickle, scratch=cfg.init == "scratch"))
        projector = ImageProjector(
            vision_width=parts.image_encoder.config.hidden_size,
            text_width=parts.text_encoder.config.hidden_size,
            latent_channels=parts.vae.config.latent_channels,
            num_tokens=parts.num_image_tokens,
        )
        mcdm = MCDM(unet, projector)
    if cfg.gradient_checkpointing:
        mcdm.unet.enable_gradient_checkpointing()
    return mcdm


def _step_inputs(cfg: TrainConfig, batch: dict, prompts, parts, noise_scheduler, prediction_type: str,
                 g: torch.Generator, dev) -> StepInputs:
    """§3.3 for one micro-batch: identity samples, condition dropout, the noised target. Every draw
    comes from `g`, on the CPU in a fixed order (pedit.noise), so a step's randomness depends on its
    seed alone, on any device."""
    n = batch["mean_A"].shape[0]
    # §3.3 (1): identity samples teach reconstruction, which the editing mask relies on (§3.4).
    identity = rand(n, g, device=dev) < cfg.identity_prob
    # §3.3 (2): drop any combination of c_s, c_im, c_p, or all of them, for multi-condition CFG.
    dropped = sample_dropout(n, cfg.drop_prob, g)
    latent_shape = tuple(batch["mean_A"].shape)  # (B, 4, h, w)
    noise = randn(latent_shape, g, device=dev)  # the diffusion noise
    posterior_noise = randn(latent_shape, g, device=dev)  # for the VAE posterior sample of the target
    t = randint(0, noise_scheduler.config.num_train_timesteps, (n,), g, device=dev)

    ident = identity
    keep_s = ((dropped & DROP_S) == 0).float().view(-1, 1, 1, 1).to(dev, non_blocking=True)
    keep_im = ((dropped & DROP_IM) == 0).float().view(-1, 1, 1).to(dev, non_blocking=True)
    drop_p = ((dropped & DROP_P) != 0).to(dev, non_blocking=True)
    # c_s is the posterior mode of x_A, z_0 a posterior sample of the target (x_A for identity
    # samples), both times the scaling factor, so c_s and z_t share one scale (docs/design-notes.md).
    c_s = batch["mean_A"].float() * parts.scaling_factor  # (B, 4, h, w)
    pick = ident.view(-1, 1, 1, 1)
    mean_T = torch.where(pick, batch["mean_A"], batch["mean_B"]).float()
    std_T = torch.where(pick, batch["std_A"], batch["std_B"]).float()
    z_0 = (mean_T + std_T * posterior_noise) * parts.scaling_factor
    clip_tokens = batch["clip_A"].float()  # (B, 1 + P, Dv)
    rows = torch.where(ident, batch["p_a"], batch["p_b"])  # prompt rows; row 0 is the empty prompt
    c_p = prompts[torch.where(drop_p, torch.zeros_like(rows), rows)].float()  # (B, 77, D)
    z_t = noise_scheduler.add_noise(z_0, noise, t)
    return StepInputs(
        z_in=torch.cat([z_t, c_s * keep_s], dim=1),
        t=t,
        c_p=c_p,
        # c_im is computed inside the forward from E(x_A), even when c_s is dropped: the
        # conditions are dropped independently.
        image_inputs=(c_s, clip_tokens, keep_im),
        target=training_target(noise_scheduler, prediction_type, z_0, noise, t),
    )


@torch.no_grad()
def validation_grid(mcdm, ema, parts, pairs, directions, size, out, step, seed, meta: dict | None = None,
                    scales=None) -> Path:
    """validation/step-N.png: for a few inputs, input | edit per direction (EMA weights, masked edit).
    `meta`: more of the model's pedit.json (a distilled student's "distilled"); `scales`: the guidance
    scales (default: the editing defaults)."""
    from PIL import Image

    from pedit.data.directions import Direction
    from pedit.edit.editor import EditOptions, Editor
    from pedit.edit.mask import MaskConfig
    from pedit.model.loading import LoadedModel
    from pedit.viz import image_grid

    ema.store(mcdm.parameters())
    ema.copy_to(mcdm.parameters())
    mcdm.eval()
    try:
        editor = Editor(LoadedModel(mcdm, parts, {**(meta or {}), "resolution": size,
                                                  "directions": list(directions.values())}, out))
        names = sorted(directions)
        inputs = [pairs[i] for i in np.random.default_rng(seed).choice(len(pairs), size=min(3, len(pairs)), replace=False)]
        options = EditOptions(steps=VALIDATION_STEPS, seed=seed, mask=MaskConfig(n_noise=VALIDATION_MASK_NOISES),
                              **({} if scales is None else {"scales": scales}))
        rows = []
        for p in inputs:
            x = Image.fromarray(load_rgb(p.x_A, size))
            rows.append([x] + [editor.edit(x, Direction(**directions[d]), options).image for d in names])
        path = out / "validation" / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(rows, col_labels=["input"] + names).save(path)
    finally:
        ema.restore(mcdm.parameters())
        mcdm.train()
    return path
