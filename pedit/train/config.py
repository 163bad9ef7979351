"""`pedit train`'s settings: `TrainConfig`, its validation, and the rule that a training folder belongs to one run."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pedit.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    data: str
    output: str
    base: str | None = None  # local diffusers folder or hub id; None → the bundled toon base
    init: str = "base"  # "base": pretrained U-Net; "scratch": the base's U-Net config, random weights
    init_from: str | None = None  # a model folder to continue from (its U-Net and projector weights)
    image_encoder: str | None = None  # CLIP vision for c_im when the base has no image_encoder/
    resolution: int | None = None  # None → the base VAE's sample_size
    max_steps: int = 1000
    max_minutes: float | None = None  # stop early (cleanly, with a model) after this much training time
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    checkpoint_every: int = 500
    validate_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema_decay: float = 0.999  # 0: no EMA copy is kept (pedit.train.optim.NoEMA)
    optimizer: str = "adamw"  # or "adafactor": far less optimizer state (SD 1.5 size on a small machine)
    identity_prob: float = 0.05
    drop_prob: float = 0.2
    seed: int = 0
    num_workers: int = 0
    allow_pickle: bool = False
    overwrite: bool = False  # delete the run already in `output` first (else: refuse it, or --resume it)
    cache: bool = True  # frozen parts' outputs computed once (pedit.train.latent_cache); False: every step
    cache_dir: str | None = None  # None → <data>/.pedit-cache
    log_every: int = 10  # loss.csv rows and progress reports flushed every N steps (one host sync)
    columns: str | None = None  # --data a datasets folder or hub id: x_A=COL,x_B=COL,p_b=COL[,p_a=..,direction=..]
    split: str = "train"  # the split of a datasets source

    def __post_init__(self):
        _check_train_config(self)


def _check_train_config(cfg: TrainConfig) -> None:
    """Every field's type and range, checked on creation: nothing NaN or out of range reaches step 1."""
    from pedit.validate import check_int, check_number, check_seed

    for name in ("data", "output"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name):
            raise ConfigError(f"{name} must be a folder name, got {getattr(cfg, name)!r}")
    if cfg.init not in ("base", "scratch"):
        raise ConfigError(f"init must be 'base' or 'scratch', got {cfg.init!r}")
    if cfg.optimizer not in ("adamw", "adafactor"):
        raise ConfigError(f"optimizer must be adamw or adafactor, got {cfg.optimizer!r}")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {cfg.mixed_precision!r}")
    for name in ("max_steps", "batch_size", "gradient_accumulation", "checkpoint_every", "keep_checkpoints", "log_every"):
        check_int(name, getattr(cfg, name), 1)
    if not isinstance(cfg.cache, bool):
        raise ConfigError(f"cache must be true or false, got {cfg.cache!r}")
    if cfg.cache_dir is not None and (not isinstance(cfg.cache_dir, str) or not cfg.cache_dir):
        raise ConfigError(f"cache_dir must be a folder name or None, got {cfg.cache_dir!r}")
    for name in ("warmup_steps", "validate_every", "num_workers"):
        check_int(name, getattr(cfg, name), 0)
    for name in ("identity_prob", "drop_prob", "ema_decay"):
        check_number(name, getattr(cfg, name), 0, 1)
    check_number("learning_rate", cfg.learning_rate, 0, 1, lo_open=True)
    if cfg.max_minutes is not None:
        check_number("max_minutes", cfg.max_minutes, 0, lo_open=True)
    if cfg.resolution is not None:
        check_int("resolution", cfg.resolution, 8, 4096)
        if cfg.resolution % 8:
            raise ConfigError(f"resolution must be a multiple of 8, got {cfg.resolution}")
    if cfg.columns is not None:
        from pedit.data.hf import parse_columns

        if not isinstance(cfg.columns, str):
            raise ConfigError(f"columns must be text like x_A=input_image,x_B=edited_image,p_b=edit_prompt, got {cfg.columns!r}")
        parse_columns(cfg.columns)  # a malformed map fails here, before anything loads
    if not isinstance(cfg.split, str) or not cfg.split.strip():
        raise ConfigError(f"split must be a split name such as train, got {cfg.split!r}")
    check_seed("seed", cfg.seed, 2**32 - 1)  # accelerate's set_seed seeds numpy, which takes 32 bits
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume and overwrite contradict each other: --resume continues the run in the "
                          "output folder, --overwrite deletes it.")


# ---------------------------------------------------------------- the output folder belongs to one run

# What `train` writes into its folder; any of them means the folder holds a run.
RUN_ENTRIES = ("config.json", "loss.csv", "pedit.json", "checkpoints", "validation", "unet", "image_projector",
               "vae", "text_encoder", "tokenizer", "image_encoder", "scheduler")
# Settings a resumed run may change: they do not change what the remaining steps compute.
RESUME_MAY_CHANGE = ("output", "resume", "overwrite", "max_steps", "max_minutes", "num_workers", "checkpoint_every",
                     "validate_every", "keep_checkpoints", "cache", "cache_dir", "log_every")


# The folders a train or distill run reads (flag, config field): -o may be none of them, inside none, hold none.
RUN_INPUTS = (("--data", "data"), ("--base", "base"), ("--init-from", "init_from"), ("--image-encoder", "image_encoder"),
              ("-m", "teacher"))


def run_entries(out: Path) -> list[str]:
    """The entries of a run in `out` (including a model save cut short)."""
    if not out.is_dir():
        return []
    held = [name for name in RUN_ENTRIES if (out / name).exists() or (out / name).is_symlink()]
    return held + sorted(p.name for p in out.glob(".model-tmp-*"))


def check_output_folder(cfg: TrainConfig) -> None:
    """A training folder belongs to one run: refuse a folder holding another run, unless `resume`
    (with the same settings) or `overwrite` (it is cleared before the first step) is asked for.

    Without this, a second run into one folder replaced the model, some checkpoints and not others,
    and a later --resume continued the old run.
    """
    from pedit.files import check_output_not_input

    out = Path(cfg.output)
    check_output_not_input(out, {flag: getattr(cfg, name, None) for flag, name in RUN_INPUTS})
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; train writes a model folder. Choose another -o.")
    held = run_entries(out)
    if cfg.resume and not held:
        raise ConfigError(f"--resume: no checkpoint in {out / 'checkpoints'}; start without --resume.")
    if cfg.resume and newest_checkpoint(out) is None:
        # Before anything loads; and "start without --resume" would be refused: the folder holds a run.
        raise ConfigError(f"--resume: the run in {out} has no checkpoint in {out / 'checkpoints'} to continue from. "
                          "Use --overwrite to delete it and start again, or choose another -o.")
    if not held or cfg.overwrite:
        return
    if not cfg.resume:
        raise ConfigError(f"{out} already holds a training run ({', '.join(held)}). Pass --resume to continue it "
                          "with the same settings, --overwrite to delete it and start again, or choose another -o.")
    try:
        saved = json.loads((out / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume: {out / 'config.json'} is missing or unreadable ({e}), so the run in {out} "
                          "cannot be matched to these settings. Use --overwrite to start again.") from None
    now = json.loads(json.dumps(asdict(cfg)))
    defaults = {f.name: f.default for f in fields(type(cfg))}  # fields older runs did not record yet
    changed = sorted(k for k in now if k not in RESUME_MAY_CHANGE and saved.get(k, defaults[k]) != now[k])
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k, defaults[k])!r} then, {now[k]!r} now" for k in changed)
        raise ConfigError(f"--resume: the run in {out} was started with other settings ({shown}). Resume with the "
                          "same settings, or use --overwrite (or another -o) to train anew.")


DATA_FINGERPRINT = "data_fingerprint"  # config.json's record of the pair folder's contents (not a TrainConfig field)


def check_resume_data(cfg: TrainConfig, fingerprint: str) -> None:
    """--resume only over the pairs the run started on: a checkpoint trained on other data, continued
    on these, is neither run. `fingerprint`: pedit.train.latent_cache.data_hash of the pairs now."""
    out = Path(cfg.output)
    try:
        saved = json.loads((out / "config.json").read_text()).get(DATA_FINGERPRINT)
    except (OSError, ValueError, AttributeError):
        saved = None  # check_output_folder has already refused an unreadable config.json
    if saved is None:
        raise ConfigError(f"--resume: the run in {out} did not record a fingerprint of its pair folder (an older "
                          "pedit made it), so changed data could not be noticed. Use --overwrite to train anew.")
    if saved != fingerprint:
        raise ConfigError(f"--resume: the pair folder {cfg.data} changed since the run in {out} began (its "
                          "metadata.jsonl or images hash differently). Resume on the same pairs, or use "
                          "--overwrite (or another -o) to train on these.")


def clear_output_folder(out: Path) -> None:
    """Delete the run in `out` (--overwrite); files that are not pedit's are left alone."""
    for name in run_entries(out):
        entry = out / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints (checkpoints/step-N), oldest first; partial ones end in .tmp and are skipped."""
    found = [p for p in (out / "checkpoints").glob("step-*") if re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def newest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None
