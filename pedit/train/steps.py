"""The step loop `pedit train` and `pedit distill` share: the run's output folder claimed (or left as it
was on failure), optimizer/EMA/lr schedule prepared by accelerate, --resume, the micro-batches, each
optimizer step with gradient accumulation, loss.csv, checkpoints, and the final model save."""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from pedit.errors import OutputError, PeditError
from pedit.train.batches import StepBatches
from pedit.train.config import DATA_FINGERPRINT, TrainConfig, checkpoints, clear_output_folder, newest_checkpoint
from pedit.train.data_source import frozen_batches
from pedit.train.loss_log import LossLog
from pedit.train.progress import TrainProgress


@dataclass
class Run:
    """What the step loop drives: prepared by accelerate, resumed at `start` (optimizer steps done)."""

    accelerator: object
    model: torch.nn.Module
    ema: object
    optimizer: object
    lr_scheduler: object
    out: Path
    start: int


def run_steps(cfg, run: Run, step_loss: Callable[[int, int], torch.Tensor], report, say,
              validation: Callable[[int], Path] | None = None) -> int:
    """Optimizer steps run.start .. cfg.max_steps (or until cfg.max_minutes): `step_loss(step, k)` runs
    micro-batch k's forward and backward and returns its loss; then clipping, the optimizer and lr
    steps, EMA, loss.csv, checkpoints and `validation(step)` grids on their schedules (pedit train and
    pedit distill share this loop). Returns the steps done."""
    accelerator, model, ema = run.accelerator, run.model, run.ema
    loss_log = LossLog(run.out / "loss.csv", run.start, enabled=accelerator.is_main_process)  # clock starts now
    done = run.start
    for step in range(run.start, cfg.max_steps):
        # Gradient accumulation: the micro-batches' gradients add up (each loss / accum), synchronised
        # across processes only on the last one; then one optimizer step.
        losses = []
        for k in range(cfg.gradient_accumulation):
            last = k == cfg.gradient_accumulation - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                losses.append(step_loss(step, k))
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

        done = step + 1
        loss_log.add(done, torch.stack(losses).mean(), run.lr_scheduler.get_last_lr()[0])
        checkpoint_now = done % cfg.checkpoint_every == 0
        validate_now = bool(cfg.validate_every) and done % cfg.validate_every == 0
        if not (done % cfg.log_every == 0 or checkpoint_now or validate_now or done == cfg.max_steps):
            continue
        # The one host synchronisation of a log interval: the interval's losses, and the time check.
        loss_value, rate, out_of_time = loss_log.flush(accelerator, cfg.max_minutes)
        report(TrainProgress(done, cfg.max_steps, loss_value, rate))
        # A time budget ends the run early but cleanly: checkpoint, grid and model as at the last step.
        final = done == cfg.max_steps or out_of_time
        if checkpoint_now or final:
            _checkpoint(accelerator, run.out, done, cfg.keep_checkpoints)
            report(TrainProgress(done, cfg.max_steps, loss_value, rate, "checkpoint",
                                 str(run.out / "checkpoints" / f"step-{done:06d}")))
        if accelerator.is_main_process and validation is not None and cfg.validate_every and (validate_now or final):
            report(TrainProgress(done, cfg.max_steps, loss_value, rate, "validation", str(validation(done))))
        if out_of_time:
            say(f"--max-minutes {cfg.max_minutes} reached after {done} steps; saving the model.")
            break
    return done


def prepare_run(cfg: TrainConfig, accelerator, model, parts, out: Path, claimed: bool, source: tuple, report, say,
                frozen_models=()):
    """Everything between the checks and step 1: the optimizer, EMA and lr schedule prepared by accelerate,
    the frozen parts (and `frozen_models`, such as a teacher) moved to the device in the training precision,
    the newest checkpoint on --resume, and the micro-batches from `source` = (pair folder, pairs, resolution).
    Returns (Run, weight dtype, DDPM noise scheduler, FrozenBatches, micro-batch iterator). A run that fails
    here (out of memory moving the parts, an unreadable image of the first --no-cache batch, a cache
    build) leaves no run behind."""
    from diffusers import DDPMScheduler

    try:
        model, ema, optimizer, lr_scheduler = _optimization(cfg, accelerator, model)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        parts.to(accelerator.device, weight_dtype)
        for frozen_model in frozen_models:
            frozen_model.to(accelerator.device, weight_dtype)
        noise_scheduler = DDPMScheduler.from_config(parts.scheduler_config)
        start = _resume(accelerator, out, report, cfg.max_steps) if cfg.resume else 0
        frozen, batches = micro_batch_source(cfg, accelerator, start, *source, parts, report, say)
    except BaseException:
        abandon_output(cfg, out, claimed)
        raise
    return Run(accelerator, model, ema, optimizer, lr_scheduler, out, start), weight_dtype, noise_scheduler, frozen, batches


def micro_batch_source(cfg: TrainConfig, accelerator, start: int, data: Path, pairs, size: int, parts, report, say):
    """(FrozenBatches, an iterator of this rank's micro-batches from optimizer step `start` on). The data
    order is one of micro-batches: step s takes micro-batches s * accum ... s * accum + accum - 1; what the
    frozen parts compute for their pairs comes from the latent cache (default), or from the images every
    step (--no-cache): the same tensors either way."""
    accum = cfg.gradient_accumulation
    sampler = StepBatches(cfg.seed, start * accum, cfg.max_steps * accum, accelerator.process_index,
                          accelerator.num_processes, cfg.batch_size, len(pairs))
    frozen = frozen_batches(cfg, data, pairs, parts, size, sampler, accelerator, report, say)
    batches = iter(frozen.batches)
    if start < cfg.max_steps:  # --no-cache encodes lazily: its first micro-batch is part of the start
        batches = itertools.chain([next(batches)], batches)
    return frozen, batches


def abandon_output(cfg: TrainConfig, out: Path, claimed: bool) -> None:
    """A run that failed before its first step leaves no run behind (a resumed one keeps its checkpoints)."""
    if claimed and not cfg.resume:
        clear_output_folder(out)
        with contextlib.suppress(OSError):
            out.rmdir()  # only if this run made it and nothing else is in it


def claim_output(cfg: TrainConfig, out: Path, data_fingerprint: str, extra: dict | None = None) -> bool:
    """The output folder, cleared first with --overwrite, with this run's config.json (and the data
    fingerprint a later --resume compares: pedit.train.config.check_resume_data; `extra`: more such
    records). True: claimed."""
    try:
        if cfg.overwrite:
            clear_output_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        record = {**asdict(cfg), DATA_FINGERPRINT: data_fingerprint, **(extra or {})}
        (out / "config.json").write_text(json.dumps(record, indent=2))
    except OSError as e:
        abandon_output(cfg, out, True)
        raise OutputError(f"Cannot write the run folder {out}: {e.strerror or e}. Free space there or choose "
                          "another -o.") from None
    return True


@contextlib.contextmanager
def writes_said(cfg: TrainConfig, out: Path, claimed: bool):
    """The steps and the final save of a run: a write that fails (a full disk, a read-only folder, at a
    checkpoint, a grid or the model) is one OutputError line. Half-written checkpoints and model saves go;
    a run with no finished checkpoint goes entirely (as if it had not started), one with a checkpoint stays
    for --resume."""
    from pedit.files import write_failure

    try:
        yield
    except BaseException as e:
        if (why := write_failure(e)) is None:
            raise
        if is_main_process():
            for half in [*out.glob(".model-tmp-*"), *(out / "checkpoints").glob("step-*.tmp")]:
                shutil.rmtree(half, ignore_errors=True)
        kept = newest_checkpoint(out) if out.is_dir() else None
        if kept is None:
            abandon_output(cfg, out, claimed)
        then = f"the run is kept up to {kept.name}: --resume once there is room" if kept else "nothing of the run was kept"
        raise OutputError(f"Could not write into {out}: {why}; {then}.") from None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _optimization(cfg: TrainConfig, accelerator, mcdm):
    """AdamW (or Adafactor) with a constant-after-warmup learning rate, and the EMA of the weights (saved in
    every checkpoint), all prepared by accelerate. Returns (mcdm, ema, optimizer, lr_scheduler)."""
    from diffusers.optimization import get_scheduler

    from pedit.train.optim import make_ema, make_optimizer

    mcdm.train()
    ema = make_ema(mcdm.parameters(), cfg.ema_decay)
    optimizer = make_optimizer(cfg.optimizer, mcdm.parameters(), cfg.learning_rate)
    # The prepared scheduler steps once per process per optimizer step (accelerate), hence the factor.
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer,
                                 num_warmup_steps=cfg.warmup_steps * accelerator.num_processes)
    mcdm, optimizer, lr_scheduler = accelerator.prepare(mcdm, optimizer, lr_scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return mcdm, ema, optimizer, lr_scheduler


def _resume(accelerator, out: Path, report, max_steps: int) -> int:
    """Load the newest checkpoint's state (model, optimizer, lr schedule, EMA, RNG); returns its step."""
    ckpt = newest_checkpoint(out)  # check_output_folder made sure there is one
    try:
        accelerator.load_state(str(ckpt))
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise PeditError(f"--resume: checkpoint {ckpt} could not be loaded ({type(e).__name__}: {e}). "
                         "Delete it to resume from an older one, or start without --resume.") from None
    start = int(ckpt.name.split("-")[1])
    report(TrainProgress(start, max_steps, float("nan"), 0.0, "resumed", str(ckpt)))
    return start


@dataclass
class StepInputs:
    """What the U-Net gets and regresses for one micro-batch (B pairs)."""

    z_in: torch.Tensor  # (B, 8, h, w): the noised target z_t beside c_s (zeros where c_s is dropped)
    t: torch.Tensor  # (B,) timesteps
    c_p: torch.Tensor  # (B, 77, D): the prompt's text embeddings (the empty prompt's where c_p is dropped)
    image_inputs: tuple  # (c_s, clip tokens (B, 1 + P, Dv), keep_im (B, 1, 1)) for c_im
    target: torch.Tensor  # (B, 4, h, w): the noise, or the velocity for a v_prediction base
    scales: torch.Tensor | None = None  # (B, 3): a distilled student's rows' guidance scales (pedit distill)


def _backward(accelerator, mcdm, inputs: StepInputs, accum: int) -> torch.Tensor:
    """One micro-batch's forward and backward; its gradient is 1/accum of the step's. Returns the loss."""
    with accelerator.autocast():
        pred = mcdm(inputs.z_in, inputs.t, inputs.c_p, image_inputs=inputs.image_inputs, scales=inputs.scales)
    loss = F.mse_loss(pred.float(), inputs.target)
    accelerator.backward(loss / accum)
    return loss.detach()


def frozen_snapshot(parts, mixed_precision: str) -> Callable:
    """What `finish` saves as the model folder's frozen parts after a reduced-precision run: a float32 CPU copy
    of the parts as this run read them, taken before they are cast (issue 27). Reloading them from the base
    or teacher folder at the end saved whatever that folder held then: a base changed during the run gave a
    model whose VAE and text encoder were not the ones it trained against. Costs host memory the size of the
    frozen parts (about 2 GB for Stable Diffusion 1.5) for the run's length; an fp32 run saves the parts
    it holds and needs no copy."""
    if mixed_precision == "no":
        return lambda: parts
    snapshot = copy.deepcopy(parts).to("cpu", torch.float32)
    return lambda: snapshot


def finish(accelerator, mcdm, ema, parts, weight_dtype, out: Path, meta: dict, fp32_parts: Callable) -> None:
    """Rank 0 saves the model folder with the EMA weights (in float32, beside the frozen parts; after a
    reduced-precision run, beside `fp32_parts()`, a fresh float32 load of them)."""
    from pedit.model.saving import save_model

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(mcdm)
        ema.store(model.parameters())
        ema.copy_to(model.parameters())  # the model folder holds the EMA weights
        if weight_dtype != torch.float32:
            parts = fp32_parts()
        save_model(out, model.to("cpu", torch.float32), parts.to("cpu", torch.float32), meta)
        ema.restore(model.parameters())
    accelerator.wait_for_everyone()


def _checkpoint(accelerator, out: Path, step: int, keep: int) -> None:
    """save_state into checkpoints/step-N (model, optimizer, lr schedule, EMA), keeping the newest `keep`."""
    path = out / "checkpoints" / f"step-{step:06d}"
    tmp = path.with_name(path.name + ".tmp")  # renamed when complete: --resume never sees half a checkpoint
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in (out / "checkpoints").glob("step-*.tmp"):  # half checkpoints of a killed run (of this folder's run)
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
