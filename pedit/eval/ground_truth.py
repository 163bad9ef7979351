"""`pedit eval`: measure a model against ground truth on a pair folder (the toon world has it).

Methods (the paper's Table 1 and ablations in miniature, §4):
- `ours`           masked two-branch sampling with the MCDM's own editing mask (§3.4)
- `ours-no-mask`   plain multi-condition sampling ("Ours w/o Mask")
- `no-c_s`         c_s dropped at inference, in the mask and the sampling (model trained with it)
- `no-c_im`        c_im dropped at inference, likewise
- `sdedit-0.5`, `sdedit-0.8`  SDEdit: E(x_A) noised to that strength, denoised with text-only CFG
                   toward p_b by the same model with both image conditions dropped
- `diffedit`       DiffEdit-style: mask from text-only predictions (|e(∅,∅,p_b) − e(∅,∅,p_a)|),
                   E(x_A) noised to 0.5 (not DDIM-inverted), text-only CFG, and outside the
                   mask the latent replaced by the source noised to the current step
Metrics against the exact target x_B: SSIM and PSNR on the whole image; PSNR inside the true mask
(edit fidelity) and outside it (preservation), each from the squared error pooled over all pairs'
pixels of that region (so a perfect region does not make an infinite mean); IoU of the predicted
binary editing mask (upsampled latent mask) with the true one; the changed-pixels IoU: of the
pixels the output changed at all (any channel differs from the input) with the true mask, for every
method (what it actually touched, whatever its mask said). LPIPS and FID need pretrained
networks that cannot be loaded offline: reported as "n/a: weights not available offline".
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pedit.eval.report import NA_OFFLINE, check_report_folder, write_report
from pedit.eval.scores import EDGE_PX, Scores, Tally, edge_band  # noqa: F401 (callers import them from here too)

from pedit.errors import ConfigError
from pedit.model.sampling_settings import SamplingSettings, check_settings
from pedit.noise import randn

METHODS = ("ours", "ours-no-mask", "no-c_s", "no-c_im", "sdedit-0.5", "sdedit-0.8", "diffedit")
OURS = METHODS[:4]  # the MCDM's sampler: the model's sampling settings apply (the baselines keep 20 DDIM steps)
BASELINE_STEPS = 20


@dataclass(frozen=True)
class EvalConfig:
    pairs: str
    model: str | None = None
    output: str | None = None
    methods: tuple[str, ...] = METHODS
    # Ours' (and its ablations') sampling: each field None keeps the model's pedit.json setting, as in
    # `pedit edit`; the baselines take the steps (else 20), seed, scales and draws too, and keep DDIM.
    # use_mask is not read (the
    # methods say it: ours and ours-no-mask).
    sampling: SamplingSettings = SamplingSettings()
    batch_size: int = 16
    limit: int | None = None
    grid_pairs: int = 6
    imperfect_reference: bool = True  # also score imperfect targets like the training ones (§3.3 claim)
    device: str = "cpu"  # the published numbers are CPU fp32; a GPU is faster, not bit-identical
    allow_pickle: bool = False
    precision: str = "fp32"  # fp32 | fp16 | bf16 (the model's weights and activations)
    backend: str = "torch"  # torch | compile | onnx | trt
    overwrite: bool = False  # replace an earlier report in `output`
    engines: str | None = None  # a `pedit export` folder for onnx / trt

    def __post_init__(self):
        from pedit.validate import check_backend, check_device, check_int, check_precision

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"Unknown method(s) {', '.join(unknown) or '(none)'}; available: {', '.join(METHODS)}.")
        check_settings(self.sampling)
        check_int("batch_size", self.batch_size, 1)
        if self.limit is not None:
            check_int("limit", self.limit, 1)
        check_int("grid_pairs", self.grid_pairs, 0)
        check_precision("precision", self.precision, optional=False)
        check_backend("backend", self.backend)
        check_device("device", self.device, optional=False)


def _rows(cond, ix: list[int]):
    return type(cond)(*(getattr(cond, f.name)[ix] for f in dataclasses.fields(cond)))


def batch_masks(denoise, ddpm, cond, scales, mask_cfgs, g, z_A, builder=None, with_diff: bool = False):
    """Editing masks (B, 1, h, w) for a batch whose pairs may carry different mask settings (per task
    or direction): one difference-map call per (n_noise, strength), thresholds applied per pair.
    `builder`: the model's row builder (pedit.edit.rows; Editor.rows), a teacher's by default.
    with_diff: (masks, the difference maps (B, h, w) before binarisation)."""
    from pedit.edit.mask import binarize, difference_map

    if not isinstance(mask_cfgs, (list, tuple)):
        mask_cfgs = [mask_cfgs] * len(z_A)
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(mask_cfgs):
        groups.setdefault((c.n_noise, c.strength), []).append(i)
    out = torch.zeros((len(z_A), 1, *z_A.shape[2:]), device=z_A.device)
    diffs = torch.zeros((len(z_A), *z_A.shape[2:]), device=z_A.device)
    for ix in groups.values():
        diff = difference_map(denoise, ddpm, _rows(cond, ix), scales, mask_cfgs[ix[0]], g, z_A[ix], builder)  # (b, h, w)
        for j, i in enumerate(ix):
            out[i] = binarize(diff[j: j + 1], mask_cfgs[i].ratio, mask_cfgs[i].threshold)[0]
            diffs[i] = diff[j]
    return (out, diffs) if with_diff else out


def batch_seed(seed: int, start: int) -> int:
    """The seed of the batch starting at pair `start`: seed + start, wrapped into the 0 .. 2**64 - 1
    that torch.Generator.manual_seed takes (a seed near the top no longer fails on a later batch;
    below it the seeds, and so the published numbers, are unchanged)."""
    return (seed + start) % 2**64


def run_method(editor, method: str, cond, steps: int, scales, seed: int, mask_cfg, scheduler_name: str = "ddim",
               guidance_interval: tuple[float, float] | None = None, with_diff: bool = False):
    """Edit a batch with one method. Returns (decoded (B, 3, R, R) in [-1, 1], latent mask (B, 1, h, w) or None),
    with_diff: and the mask's difference maps (B, h, w) before binarisation, or None (what a "pixel"
    refinement reads, pedit.edit.pixel_mask).

    `mask_cfg`: one MaskConfig, or one per pair of the batch. Ours and its ablations run the editor's
    own stages (its row builder, pedit.edit.job.sampling_job) with `scheduler_name` and `guidance_interval`;
    the baselines (pedit.eval.baselines) keep DDIM with every step guided."""
    from pedit.edit.editor import EditOptions
    from pedit.edit.job import run, sampling_job
    from pedit.edit.schedules import noise_scheduler
    from pedit.eval import baselines

    parts = editor.model.parts
    g = torch.Generator().manual_seed(seed)
    ddpm = noise_scheduler(parts.scheduler_config)
    z_A = cond.c_s  # E(x_A), what the mask noises even when the c_s condition is dropped
    if method in OURS:
        options = EditOptions(steps=steps, scales=scales, scheduler=scheduler_name, guidance_interval=guidance_interval)
        cond = baselines.drop(cond, c_s=method == "no-c_s", c_im=method == "no-c_im")
        mask, diff = (None, None) if method == "ours-no-mask" else batch_masks(
            editor.denoise, ddpm, cond, scales, mask_cfg, g, z_A, editor.rows, with_diff=True)
        job = sampling_job(editor.rows, editor.scheduler(options), cond, randn(cond.c_s.shape, g, like=cond.c_s),
                           mask, options)
        run([job], editor.denoise)
        return (parts.decode(job.z), mask, diff) if with_diff else (parts.decode(job.z), mask)
    noise = randn(cond.c_s.shape, g, like=cond.c_s)
    if method.startswith("sdedit"):
        decoded = parts.decode(baselines.sdedit(editor, cond, noise, steps, scales, float(method.split("-")[1])))
        return (decoded, None, None) if with_diff else (decoded, None)
    mask = batch_masks(editor.denoise, ddpm, baselines.text_only(cond), scales, mask_cfg, g, z_A)  # text-only mask
    decoded = parts.decode(baselines.diffedit(editor, cond, noise, steps, scales, mask, ddpm))
    return (decoded, mask, None) if with_diff else (decoded, mask)


STUDENT_METHODS = ("ours", "ours-no-mask")  # what a distilled student runs: fully conditioned rows only


def student_methods(cfg: EvalConfig) -> EvalConfig:
    """For a distilled model folder (pedit distill): the default methods become STUDENT_METHODS; asked
    for by name, the ablations and baselines (rows with conditions dropped, which a student never
    learned) are one ConfigError, as are scales outside the student's range. Other folders: cfg as given."""
    from pedit.model.loading import read_model_folder

    from pedit.model.distilled import check_meta_scales

    meta = read_model_folder(cfg.model)[1]
    if "distilled" not in meta:
        return cfg
    for task in (None, *meta.get("sampling_by_task", {})):  # each task's sampler, as its directions edit
        sampling = eval_sampling(cfg.sampling, meta, task)
        check_meta_scales(meta, (sampling.s_s, sampling.s_im, sampling.s_p), sampling.guidance_interval)
    if cfg.methods == METHODS:
        return dataclasses.replace(cfg, methods=STUDENT_METHODS)
    other = [m for m in cfg.methods if m not in STUDENT_METHODS]
    if other:
        raise ConfigError(f"{cfg.model} is a distilled student: it runs {', '.join(STUDENT_METHODS)} only; "
                          f"{', '.join(other)} need(s) rows with conditions dropped. Evaluate those with its teacher.")
    return cfg


def eval_mask_configs(cfg: EvalConfig, pairs) -> dict:
    """Direction name → the mask settings the model folder carries for it (pedit.model.mask_settings,
    as Editor.default_options gives them) with cfg.sampling's draws laid over them; read before the
    model loads, so the backend knows the largest U-Net call (pedit.edit.mask.unet_rows)."""
    from pedit.data.directions import Direction, model_directions
    from pedit.data.pairs import direction_of
    from pedit.edit.options import mask_for
    from pedit.model.mask_settings import mask_config_for
    from pedit.model.loading import read_model_folder

    folder, meta = read_model_folder(cfg.model)
    known = model_directions(meta, folder)
    out = {}
    for p in pairs:
        if p.direction not in out:
            mask_cfg = mask_config_for(meta, known.get(p.direction) or Direction(**direction_of(p)), folder=folder)
            out[p.direction] = mask_for(mask_cfg, cfg.sampling)
    return out


def eval_sampling(settings: SamplingSettings, meta: dict, task: str | None = None):
    """Ours' sampler and scales for a direction of `task`: each of the settings' steps, scheduler,
    guidance interval and scales given, else the model's setting for the task ("sampling" with
    "sampling_by_task"; pedit.model.sampling_settings.resolved; task None: "sampling" alone)."""
    from pedit.model.sampling_settings import resolved, sampling_for

    return resolved(settings, sampling_for(meta, task))


def sampling_by_task(sampling, sampler_of: dict, known: dict) -> dict:
    """{"ours_by_task": {task: its sampler}} for the report when a task's sampler is not `sampling`
    (the folder's "sampling_by_task"), else {}."""
    by_task = {known[d].task: s for d, s in sampler_of.items()}
    if all(s == sampling for s in by_task.values()):
        return {}
    return {"ours_by_task": {t: dataclasses.asdict(s) for t, s in sorted(by_task.items())}}


def run_method_by_sampler(editor, method: str, cond, samplers: list, seed: int, start: int, mask_cfgs: list):
    """run_method (with_diff) over a batch whose pairs may have different samplers (`samplers`, one
    Sampling a pair: a folder's "sampling_by_task"): one run per sampler on its pairs, the results put
    back in the batch's order. One sampler: exactly the one run of the whole batch (seed
    batch_seed(seed, start)); each further sampler's pairs draw their noise from batch_seed(seed,
    start + its first pair's index in the batch)."""
    from pedit.edit.guidance import GuidanceScales
    from pedit.edit.options import sampler_groups

    groups = sampler_groups(samplers, key=lambda s: s)
    parts = []
    for ix in groups:
        s = samplers[ix[0]]
        sub = cond if len(groups) == 1 else _rows(cond, ix)
        scales = GuidanceScales(s.s_s, s.s_im, s.s_p)
        parts.append((ix, run_method(editor, method, sub, s.steps, scales, batch_seed(seed, start + ix[0]),
                                     [mask_cfgs[i] for i in ix], s.scheduler, s.guidance_interval, with_diff=True)))
    if len(parts) == 1:
        return parts[0][1]
    order = torch.tensor([i for ix, _ in parts for i in ix]).argsort()
    joined = [None if parts[0][1][k] is None else torch.cat([out[k] for _, out in parts])[order] for k in range(3)]
    return tuple(joined)


def evaluate(cfg: EvalConfig, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Score every method on the pair folder; writes report.json, report.md and grid.png to cfg.output."""
    from PIL import Image

    from pedit.toon import world as toon
    from pedit.data.directions import Direction
    from pedit.edit.editor import keep_outside, tensor_to_uint8, uint8_to_tensor
    from pedit.export.backends import load_editor
    from pedit.edit.mask import unet_rows
    from pedit.data.pairs import direction_of, load_rgb, read_pairs

    check_report_folder(cfg)
    cfg = student_methods(cfg)
    pairs = read_pairs(cfg.pairs)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    mask_by_direction = eval_mask_configs(cfg, pairs)
    images = min(cfg.batch_size, len(pairs))  # run_method edits a batch of pairs in one U-Net call
    editor = load_editor(cfg.model, device=cfg.device, allow_pickle=cfg.allow_pickle,
                         precision=cfg.precision, backend=cfg.backend, engines=cfg.engines,
                         unet_rows=max(unet_rows(c, images) for c in mask_by_direction.values()))
    size = editor.resolution
    sampling = eval_sampling(cfg.sampling, editor.model.meta)  # ours: the flags over the model's pedit.json "sampling"
    baseline_steps = cfg.sampling.steps or BASELINE_STEPS
    from pedit.eval.ceiling import grid_truth, iou_ceiling

    cells = size // editor.model.parts.latent_factor  # the latent grid the editing mask lives on
    known = editor.directions
    for p in pairs:
        if p.direction not in known:
            known[p.direction] = Direction(**direction_of(p))
    # ours: each direction's sampler (its task's, "sampling_by_task"); the baselines: 20 DDIM steps
    sampler_of = {p.direction: eval_sampling(cfg.sampling, editor.model.meta, known[p.direction].task) for p in pairs}
    baseline = dataclasses.replace(sampling, steps=baseline_steps)

    totals = {m: Tally() for m in cfg.methods}  # against the true region at full resolution
    on_grid = {m: Tally() for m in cfg.methods}  # against the true region on the latent grid (grid_truth)
    reference = Scores()  # imperfect targets (like the training ones) scored against the exact ones
    grid_rows = []
    seconds = {m: 0.0 for m in cfg.methods}
    blend_seconds = {m: 0.0 for m in cfg.methods}  # the blend weight and composite (keep_outside), not in `seconds`
    for start in range(0, len(pairs), cfg.batch_size):
        batch = pairs[start: start + cfg.batch_size]
        src = [load_rgb(p.x_A, size) for p in batch]
        tgt = [load_rgb(p.x_B, size) for p in batch]
        true_masks = [
            np.asarray(Image.open(p.mask).convert("L").resize((size, size), Image.NEAREST)) > 127
            if p.mask is not None else np.any(s != t, axis=2)
            for p, s, t in zip(batch, src, tgt)
        ]
        ceilings = [iou_ceiling(m, cells) for m in true_masks]
        bands = [edge_band(m) for m in true_masks]
        grid_masks = [grid_truth(m, cells) for m in true_masks]
        grid_bands = [edge_band(m) for m in grid_masks]
        # the model folder's own mask settings for each pair's direction (pedit.model.mask_settings)
        mask_cfgs = [mask_by_direction[p.direction] for p in batch]
        conds = [editor.conditions(uint8_to_tensor(s), editor.direction(p.direction)) for s, p in zip(src, batch)]
        cond = type(conds[0])(*(torch.cat([getattr(c, f.name) for c in conds]) for f in dataclasses.fields(conds[0])))
        outs_for_grid = {}
        reconstructions = None  # decoded c_s, for pixel masks measuring change from it (pedit.edit.pixel_mask)
        if any(c.refine == "pixel" and c.change_from == "reconstruction" for c in mask_cfgs):
            reconstructions = [tensor_to_uint8(editor.model.parts.decode(cond.c_s[i: i + 1])) for i in range(len(batch))]
        for m in cfg.methods:
            t0 = time.perf_counter()
            samplers = [sampler_of[p.direction] if m in OURS else baseline for p in batch]
            decoded, mask, diff = run_method_by_sampler(editor, m, cond, samplers, cfg.sampling.seed, start, mask_cfgs)
            seconds[m] += time.perf_counter() - t0
            for i, p in enumerate(batch):
                raw = tensor_to_uint8(decoded[i: i + 1])
                pred = latent = None
                out = raw
                if mask is not None:
                    latent = np.kron(mask[i, 0].cpu().numpy(), np.ones((size // mask.shape[-1],) * 2)) > 0.5
                    pred = latent
                    if m != "diffedit":  # ours: pixels outside the blend weight are the input's
                        t0 = time.perf_counter()
                        out, weight = keep_outside(src[i], raw, mask[i: i + 1].cpu(), mask_cfgs[i],
                                                   None if diff is None else diff[i].float().cpu().numpy(),
                                                   None if reconstructions is None else reconstructions[i])
                        blend_seconds[m] += time.perf_counter() - t0
                        if mask_cfgs[i].refine in ("pixel", "learned"):  # the mask that blended: the pixel weight
                            pred = weight >= 0.5
                totals[m].add(p.direction, out, tgt[i], true_masks[i], pred, ceilings[i], src[i], latent, bands[i])
                on_grid[m].add(p.direction, out, tgt[i], grid_masks[i], pred, 1.0, src[i], latent, grid_bands[i],
                               ssim=False)
                if start + i < cfg.grid_pairs:
                    outs_for_grid.setdefault(i, {})[m] = out
            if progress:
                progress(m, min(start + cfg.batch_size, len(pairs)), len(pairs))
        if cfg.imperfect_reference:
            for i, p in enumerate(batch):
                if p.extra.get("source") != "toon" or p.direction not in toon.DIRECTIONS:
                    continue  # only the toon world can re-render an imperfect target
                rng = np.random.default_rng([p.seed, 7])
                imperfect = toon.make_pair(p.seed, p.direction, size, toon.sample_imperfection(rng)).x_B
                reference.add(imperfect, tgt[i], true_masks[i], None)
        for i, outs in outs_for_grid.items():
            grid_rows.append([Image.fromarray(src[i]), Image.fromarray(tgt[i])] + [Image.fromarray(outs[m]) for m in cfg.methods])

    report = {
        "config": dataclasses.asdict(cfg),
        "model": str(editor.model.path),
        "pairs": len(pairs),
        "sampling": {"ours": dataclasses.asdict(sampling), "baselines": {"scheduler": "ddim", "steps": baseline_steps},
                     **sampling_by_task(sampling, sampler_of, known)},
        "methods": {m: {**totals[m].pooled.summary(), "seconds_per_pair": seconds[m] / len(pairs),
                        "blend_seconds_per_pair": blend_seconds[m] / len(pairs)} for m in cfg.methods},
        "per_direction": {m: totals[m].per_direction() for m in cfg.methods},
        # the same scores against the true region on the latent grid: the cells of the grid mask nearest
        # the truth (pedit.eval.ceiling.grid_truth), what a latent-grid editor can at best aim for
        "on_grid_truth": {"cells": cells, "methods": {m: on_grid[m].pooled.summary() for m in cfg.methods},
                          "per_direction": {m: on_grid[m].per_direction() for m in cfg.methods}},
    }
    if cfg.imperfect_reference:
        report["imperfect_targets"] = reference.summary()
    if cfg.output:
        write_report(Path(cfg.output), report, grid_rows, cfg)
    return report
