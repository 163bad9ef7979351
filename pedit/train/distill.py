"""`pedit distill`: guidance distillation of a trained MCDM (issue 18, item 3; Meng et al., "On
Distillation of Guided Diffusion Models", CVPR 2023, stage one).

The teacher's guided prediction of one prompt row costs 4 U-Net rows (pedit.edit.guidance.multi_cfg):

    eps~(p) = e(∅,∅,∅) + s_s [e(s,∅,∅) − e(∅,∅,∅)] + s_im [e(s,im,∅) − e(s,∅,∅)] + s_p [e(s,im,p) − e(s,im,∅)]

The student, the teacher's U-Net and projector plus a scale embedding (pedit.model.distilled),
regresses it in one row: loss = ‖student(z_t, t, c_s, c_im, c_p, scales) − eps~(p)‖², with per
sample scales drawn uniformly from `scale_range`, the prompt p_b or p_a (each half the time), and
z_t the pair's x_B or x_A noised at a uniform timestep (each half the time: the editing mask
noises x_A with p_b and p_a, the sampler's trajectory goes from x_A's toward x_B's). No condition
dropout: a student only ever runs fully conditioned rows. Every step's randomness comes from its
seed (`step_seed`), so a resumed run equals a straight one, as in `pedit train`, whose loop
(accelerate, EMA, checkpoints, latent cache, time budget) this shares (pedit.train.steps.run_steps).

Masked edit with a student: 2 rows a step (p_b, p_a) instead of 5, 1 without the mask; its mask
draws stay 2 rows. Step distillation (fewer steps) is not part of this stage.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from pedit.errors import ConfigError
from pedit.noise import rand, randint, randn
from pedit.data.pairs import read_pairs
from pedit.model.distilled import DEFAULT_RANGE, MAX_SCALE, ROWS_PER_STEP, SCALE_NAMES
from pedit.train.batches import step_seed
from pedit.train.config import TrainConfig, check_output_folder, check_resume_data
from pedit.train.data_source import cache_root, data_folder
from pedit.train.loop import _directions, check_prediction_type, validation_grid
from pedit.train.steps import StepInputs, _backward, claim_output, finish, frozen_snapshot, prepare_run, run_steps, writes_said
from pedit.train.progress import TrainProgress

# What a student's pedit.json keeps of its teacher's: the frozen parts' origin, the directions, the
# tuned mask and sampling settings. The rest (format, training, bundled) is the student's own.
KEPT_FROM_TEACHER = ("base", "init", "resolution", "latent_factor", "directions", "prediction_type", "mask",
                     "mask_by_task", "mask_by_direction", "sampling", "sampling_by_task")


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """`pedit train`'s settings (data, output, steps, batch, lr, EMA, checkpoints, cache, resume) plus
    the teacher and the scale range; a base, init and the dropout settings do not apply."""

    teacher: str | None = None  # the model folder to distill; None: the bundled toon model
    scale_range: tuple = tuple(DEFAULT_RANGE[n] for n in SCALE_NAMES)  # ((lo, hi) of s_s, s_im, s_p)

    def __post_init__(self):
        super().__post_init__()
        from pedit.validate import check_number

        if self.base is not None or self.init_from is not None or self.init != "base" or self.resolution is not None:
            raise ConfigError("pedit distill takes its base, weights and resolution from the teacher (-m); "
                              "base, init, init_from and resolution do not apply.")
        ok = isinstance(self.scale_range, (tuple, list)) and len(self.scale_range) == len(SCALE_NAMES)
        if not ok or not all(isinstance(r, (tuple, list)) and len(r) == 2 for r in self.scale_range):
            raise ConfigError(f"scale_range must give (lo, hi) for each of {', '.join(SCALE_NAMES)}, "
                              f"got {self.scale_range!r}")
        for name, (lo, hi) in zip(SCALE_NAMES, self.scale_range):
            check_number(f"{name} low", lo, 0, MAX_SCALE)
            check_number(f"{name} high", hi, lo, MAX_SCALE)  # the scale features repeat every 16 units
        object.__setattr__(self, "scale_range", tuple((float(lo), float(hi)) for lo, hi in self.scale_range))


TEACHER_FINGERPRINT = "teacher_fingerprint"  # config.json's record of the teacher's content (not a config field)


def check_resume_teacher(cfg: DistillConfig, fingerprint: str) -> None:
    """--resume only against the teacher the run started from (its files' content, not its path)."""
    import json

    try:
        saved = json.loads((Path(cfg.output) / "config.json").read_text()).get(TEACHER_FINGERPRINT)
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved != fingerprint:
        raise ConfigError(f"--resume: the teacher {cfg.teacher or 'bundled model'} is not the one the run in "
                          f"{cfg.output} started from (its files hash differently, or the run did not record it). "
                          "Resume with that teacher, or use --overwrite (or another -o) to distil this one.")


def parse_scale_range(text: str) -> tuple:
    """--scale-range "s_s=1:2.5,s_im=1:2,s_p=1:7.5" (any subset; the rest keep their defaults)."""
    ranges = dict(DEFAULT_RANGE)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, span = item.partition("=")
        lo, _, hi = span.partition(":")
        if name.strip() not in ranges:
            raise ConfigError(f"--scale-range: unknown scale {name.strip()!r}; use {', '.join(SCALE_NAMES)}")
        try:
            ranges[name.strip()] = (float(lo), float(hi))
        except ValueError:
            raise ConfigError(f"--scale-range: {item!r} is not NAME=LO:HI (for example s_p=1:7.5)") from None
    return tuple(ranges[n] for n in SCALE_NAMES)


@torch.no_grad()
def teacher_eps(teacher, z_t, t, c_s, clip_tokens, c_p, c_null, scales) -> torch.Tensor:
    """The teacher's nested eps~(p) (B, 4, h, w) float32 for rows z_t (B, 4, h, w) at timesteps t (B,),
    prompts c_p (B, 77, D), and per-row scales (B, 3): one 4B-row call (rows 0-3 of the guidance layout)."""
    from pedit.edit.guidance import multi_cfg
    from pedit.model.conditions import EditConditions

    n, dtype = z_t.shape[0], teacher.dtype
    c_s = c_s.to(dtype)
    c_im = teacher.image_projector(c_s, clip_tokens.to(dtype))
    cond = EditConditions(c_s, c_im, c_p.to(dtype), c_p.to(dtype), c_null.to(dtype).expand(n, -1, -1))
    c_s_rows, context = (rows[: 4 * n] for rows in cond.guidance_rows())  # [∅∅∅, s∅∅, s·im·∅, s·im·p]
    z_in = torch.cat([z_t.to(dtype).repeat(4, 1, 1, 1), c_s_rows], dim=1)
    e = teacher(z_in, t.repeat(4), context).float().chunk(4)
    weights = SimpleNamespace(**{name: scales[:, i].view(-1, 1, 1, 1) for i, name in enumerate(SCALE_NAMES)})
    return multi_cfg(*e, weights)


def distill_inputs(batch: dict, prompts, parts, teacher, noise_scheduler, scale_range: torch.Tensor,
                   g: torch.Generator, dev) -> StepInputs:
    """One micro-batch of the student's regression (module docstring). Every draw comes from `g`."""
    n = batch["mean_A"].shape[0]
    shape = tuple(batch["mean_A"].shape)  # (B, 4, h, w)
    noise = randn(shape, g, device=dev)
    posterior_noise = randn(shape, g, device=dev)
    t = randint(0, noise_scheduler.config.num_train_timesteps, (n,), g, device=dev)
    from_b = (rand(n, g, device=dev) < 0.5).view(-1, 1, 1, 1)  # the noised latent: x_B's, else x_A's
    to_b = rand(n, g, device=dev) < 0.5  # the row's prompt: p_b, else p_a
    lo, hi = scale_range[:, 0], scale_range[:, 1]  # on the host, as the draw: one copy to the device
    scales = (lo + rand((n, len(SCALE_NAMES)), g) * (hi - lo)).to(dev, non_blocking=True)  # (B, 3)
    c_s = batch["mean_A"].float() * parts.scaling_factor
    mean = torch.where(from_b, batch["mean_B"], batch["mean_A"]).float()
    std = torch.where(from_b, batch["std_B"], batch["std_A"]).float()
    z_t = noise_scheduler.add_noise((mean + std * posterior_noise) * parts.scaling_factor, noise, t)
    c_p = prompts[torch.where(to_b, batch["p_b"], batch["p_a"])].float()  # (B, 77, D)
    clip_tokens = batch["clip_A"].float()
    target = teacher_eps(teacher, z_t, t, c_s, clip_tokens, c_p, prompts[:1], scales)
    keep_im = torch.ones((n, 1, 1), device=dev)
    return StepInputs(z_in=torch.cat([z_t, c_s], dim=1), t=t, c_p=c_p, image_inputs=(c_s, clip_tokens, keep_im),
                      target=target, scales=scales)


def make_student(teacher_mcdm, gradient_checkpointing: bool = False):
    """The untrained student: the teacher's weights, a zero-output scale embedding (pedit.model.distilled)."""
    from pedit.model.distilled import student_unet
    from pedit.model.mcdm import MCDM

    student = MCDM(student_unet(teacher_mcdm.unet), copy.deepcopy(teacher_mcdm.image_projector)).requires_grad_(True)
    if gradient_checkpointing:
        student.unet.enable_gradient_checkpointing()
    return student


def without_learned_refiner(meta: dict) -> dict:
    """The mask levels of `meta` ("mask", "mask_by_task", "mask_by_direction") with a learned refiner's
    settings dropped: the refiner was trained on the teacher's edits and its file stays with the teacher,
    so an inherited "learned" becomes the hand-made "pixel" kind (whose settings sit beside it)."""
    def plain(settings: dict) -> dict:
        out = {k: v for k, v in settings.items() if not k.startswith("refiner")}
        return {**out, "refine": "pixel"} if out.get("refine") == "learned" else out

    levels = {}
    if isinstance(meta.get("mask"), dict):
        levels["mask"] = plain(meta["mask"])
    for level in ("mask_by_task", "mask_by_direction"):
        if isinstance(meta.get(level), dict):
            levels[level] = {k: plain(v) if isinstance(v, dict) else v for k, v in meta[level].items()}
    return levels


def as_students(sampling, unit_scales: bool):
    """A teacher's sampling section as its student keeps it: "chosen_by" marked as the teacher's (measured
    on the teacher, until measured on the student), and a guidance interval dropped unless the student's
    scale range holds the unit scales that unguided steps take."""
    if not isinstance(sampling, dict):
        return sampling  # the student's pedit.json check names it
    out = {k: v for k, v in sampling.items() if unit_scales or k != "guidance_interval"}
    if "chosen_by" in out:
        out["chosen_by"] = "the teacher's: " + out["chosen_by"]
    return out


def student_settings(cfg: DistillConfig, teacher_meta: dict) -> tuple[dict, object]:
    """What the student's pedit.json keeps of the teacher's (KEPT_FROM_TEACHER; an inherited guidance
    interval dropped when its unit scales fall outside cfg.scale_range), and the validation grids'
    scales: the editing defaults, moved into the range."""
    from pedit.edit.guidance import GuidanceScales

    kept = {k: teacher_meta[k] for k in KEPT_FROM_TEACHER if k in teacher_meta}
    kept.update(without_learned_refiner(kept))
    unit_scales = all(lo <= 1 <= hi for lo, hi in cfg.scale_range)
    if "sampling" in kept:
        kept["sampling"] = as_students(kept["sampling"], unit_scales)
    if isinstance(kept.get("sampling_by_task"), dict):
        kept["sampling_by_task"] = {t: as_students(v, unit_scales) for t, v in kept["sampling_by_task"].items()}
    defaults = GuidanceScales()
    validation = GuidanceScales(*(min(max(getattr(defaults, n), lo), hi) for n, (lo, hi) in zip(SCALE_NAMES,
                                                                                                 cfg.scale_range)))
    return kept, validation


def load_teacher(cfg: DistillConfig, pairs):
    """The teacher (a LoadedModel) and its content fingerprint, checked: not a student itself, a schedule
    pedit trains, every direction of the pairs among its own, and on --resume the teacher the run began with."""
    from pedit.model.loading import load_model
    from pedit.model.traced import model_key

    teacher = load_model(cfg.teacher, cfg.allow_pickle)
    if teacher.mcdm.distilled:
        raise ConfigError(f"{teacher.path} is already a distilled student; distil its teacher instead.")
    check_prediction_type(teacher.parts.scheduler_config)
    unknown = sorted({p.direction for p in pairs} - {d["name"] for d in teacher.meta.get("directions", [])})
    if unknown:
        raise ConfigError(f"The pairs have direction(s) {', '.join(unknown)} that the teacher {teacher.path} was not "
                          "trained on; distil on pairs of its own directions.")
    fingerprint = model_key(teacher.path)  # the teacher's content: a resumed run regresses the same target
    if cfg.resume:
        check_resume_teacher(cfg, fingerprint)
    return teacher, fingerprint


def distill(cfg: DistillConfig, progress: Callable[[TrainProgress], None] | None = None,
            log: Callable[[str], None] | None = None) -> Path:
    """Distil the teacher into a student model folder at cfg.output; returns it. Only rank 0 writes."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from pedit.train.latent_cache import check_writable, data_hash

    out = Path(cfg.output)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    check_output_folder(cfg)
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    say = log if (log is not None and main) else (lambda _msg: None)
    report = progress if (progress is not None and main) else (lambda _p: None)

    with accelerator.main_process_first():
        data = data_folder(cfg, say, report)
    pairs = read_pairs(data)
    fingerprint = data_hash(data, pairs)
    if cfg.resume:
        check_resume_data(cfg, fingerprint)
    teacher, teacher_fingerprint = load_teacher(cfg, pairs)
    parts, size = teacher.parts, teacher.resolution
    if cfg.cache and main:
        check_writable(cache_root(cfg, data))
    directions = _directions(pairs)
    say(f"{len(pairs)} pairs; teacher {teacher.path}; scales {dict(zip(SCALE_NAMES, cfg.scale_range))}")
    kept, validation_scales = student_settings(cfg, teacher.meta)
    set_seed(cfg.seed)  # the scale embedding's first layer starts random: a function of the seed, as in train
    student = make_student(teacher.mcdm, cfg.gradient_checkpointing)
    claimed = main and claim_output(cfg, out, fingerprint, {TEACHER_FINGERPRINT: teacher_fingerprint})
    fp32_parts = frozen_snapshot(parts, cfg.mixed_precision)  # the frozen parts as read now, for the save
    run, weight_dtype, noise_scheduler, frozen, micro_batches = prepare_run(
        cfg, accelerator, student, parts, out, claimed, (data, pairs, size), report, say, (teacher.mcdm,))
    student, ema, accum, rank = run.model, run.ema, cfg.gradient_accumulation, accelerator.process_index
    scale_range = torch.tensor(cfg.scale_range)  # (3, 2)
    distilled = {"kind": "guidance", "rows_per_branch": 1, "rows_per_step": ROWS_PER_STEP,
                 "scale_range": {n: list(r) for n, r in zip(SCALE_NAMES, cfg.scale_range)}, "teacher": str(teacher.path)}

    def step_loss(step: int, k: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step_seed(cfg.seed, step * accum + k, rank))
        with accelerator.autocast():
            inputs = distill_inputs(next(micro_batches), frozen.prompts, parts, teacher.mcdm, noise_scheduler,
                                    scale_range, g, accelerator.device)
        return _backward(accelerator, student, inputs, accum)

    def validation(done: int) -> Path:
        return validation_grid(accelerator.unwrap_model(student), ema, parts, pairs, directions, size, out, done,
                               cfg.seed, {"distilled": distilled}, validation_scales)

    with writes_said(cfg, out, claimed):
        done = run_steps(cfg, run, step_loss, report, say, validation)
        meta = {**kept,
                "distilled": {**distilled, "steps_trained": done}, "steps_trained": done, "training": asdict(cfg)}
        finish(accelerator, student, ema, parts, weight_dtype, out, meta, fp32_parts)
    return out
