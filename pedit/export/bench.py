"""`pedit bench`: where the time of one edit goes, per backend, and how it compares with InstructPix2Pix.

One edit is timed stage by stage, as `Editor.edit` runs it: encode (VAE encoder, CLIP image
encoder + projector, the three prompts), mask (the one batched 5 x N-row U-Net call of §3.4),
steps (the sampling loop, one 5-row call a step), decode (VAE decoder), and the whole edit
end to end. Each figure is the median of `repeats` runs after `warmup` runs; on CUDA the stages
are timed with CUDA events (the GPU's own clock, no host overhead counted twice). `load` is
timed once: loading the model and building the backend (for onnx/trt this includes an export
when no engines exist yet; for compile the compilation happens in the first, warm-up, edit,
reported as `first_edit_s`).

U-Net FLOPs per step come from torch.utils.flop_counter on the eager 5-row call; achieved TFLOP/s
is that divided by the median step time. U-Net rows per edit (the mask call's 2 rows a draw plus 5
a step, `edit_rows`) and FLOPs per edit (rows x the FLOPs of one row: a U-Net call's cost is linear
in its batch) are reported for our edit and for InstructPix2Pix (3 rows a step, no mask). `--vs ip2p` times diffusers'
StableDiffusionInstructPix2PixPipeline (3 U-Net rows a step) on the same U-Net weights, VAE,
scheduler, steps and resolution in the same process, and reports our edit's speed-up over it.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from pedit.errors import ConfigError, OutputError
from pedit.model.sampling_settings import SamplingSettings, check_settings

STAGES = ("encode", "mask", "steps", "decode", "edit")


@dataclass(frozen=True)
class BenchConfig:
    model: str | None = None  # a model folder; None with arch "model" → the bundled toon model
    arch: str = "model"  # "model" (-m) or "sd15" (SD1.5 size, random weights)
    backends: tuple[str, ...] = ("torch",)
    repeats: int = 5
    warmup: int = 1
    vs_ip2p: bool = False
    resolution: int | None = None  # sd15 only (default 512)
    device: str | None = None  # default: cuda when available
    precision: str | None = None  # default: fp16 on CUDA, fp32 on the CPU
    # Our edit's sampling, as `pedit edit` lays it over the model's pedit.json for `direction` (--arch
    # sd15: 20 DDIM steps, 10 mask draws); the seed also seeds sd15's random weights. InstructPix2Pix
    # keeps its DDIM.
    sampling: SamplingSettings = SamplingSettings()
    direction: str = "laughing"
    engines: str | None = None
    ip2p_steps: int | None = None  # InstructPix2Pix's steps; None: the steps given, else 20 (its usual)

    output: str | None = None  # also write the JSON report here
    overwrite: bool = False  # replace an existing `output`

    def __post_init__(self):
        from pedit.validate import BACKENDS, check_device, check_int, check_precision

        if self.arch not in ("model", "sd15"):
            raise ConfigError(f"arch must be 'model' or 'sd15', got {self.arch!r}.")
        if self.arch == "sd15" and self.model:
            raise ConfigError("Give either -m MODEL or --arch sd15, not both.")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise ConfigError(f"Unknown backend(s) {', '.join(bad) or '(none)'}; choose from {', '.join(BACKENDS)}.")
        if self.arch == "sd15" and any(b in ("onnx", "trt") for b in self.backends):
            raise ConfigError("--arch sd15 benches the torch and compile backends (random weights, no model folder "
                              "to export); for onnx/trt export a model folder and pass -m.")
        check_settings(self.sampling)
        check_int("repeats", self.repeats, 1)
        check_int("warmup", self.warmup, 0)
        if self.ip2p_steps is not None:
            check_int("ip2p_steps", self.ip2p_steps, 1)
            if not self.vs_ip2p:
                raise ConfigError("--ip2p-steps sets InstructPix2Pix's steps: it goes with --vs ip2p.")
        check_device("device", self.device)
        check_precision("precision", self.precision)
        if not isinstance(self.direction, str) or not self.direction:
            raise ConfigError(f"direction must be a direction name, got {self.direction!r}")
        if self.resolution is not None and (self.arch != "sd15" or self.resolution < 64 or self.resolution % 64):
            raise ConfigError("--resolution applies to --arch sd15 and must be a multiple of 64.")


class Timer:
    """Stage timings: CUDA events on a GPU (read after one synchronise), perf_counter on the CPU."""

    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.spans: dict[str, list] = {}

    @contextmanager
    def __call__(self, name: str):
        import torch

        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.spans.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.spans.setdefault(name, []).append(time.perf_counter() - t0)

    def seconds(self) -> dict[str, list[float]]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return {k: [s.elapsed_time(e) / 1000 for s, e in v] for k, v in self.spans.items()}
        return dict(self.spans)


def _load(cfg: BenchConfig, backend: str, log):
    import torch

    from pedit.edit.editor import PRECISIONS, Editor
    from pedit.export.backends import load_editor
    from pedit.edit.mask import unet_rows

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.arch == "sd15":
        from pedit.export.backends import make_denoise
        from pedit.export.sd15 import build_sd15

        precision = cfg.precision or ("fp16" if device.startswith("cuda") else "fp32")
        model = build_sd15(cfg.resolution or 512, device, PRECISIONS[precision], cfg.sampling.seed)
        return Editor(model, make_denoise(model, backend))
    return load_editor(cfg.model, device=device, backend=backend, precision=cfg.precision,
                       engines=cfg.engines, log=log, unet_rows=unet_rows(mask_config(cfg) if cfg.sampling.use_mask else None))


def mask_config(cfg: BenchConfig):
    from pedit.edit.mask import MaskConfig

    return MaskConfig(n_noise=cfg.sampling.mask_noises, batch=cfg.sampling.mask_batch)  # filled by with_sampling


def check_direction(cfg: BenchConfig) -> None:
    """cfg.direction is one the benched model has: checked before any model is loaded."""
    from pedit.data.directions import BUILTIN, model_directions, resolve

    if cfg.arch == "sd15":
        resolve(cfg.direction, dict(BUILTIN))  # build_sd15's model carries the built-in directions
        return
    from pedit.model.loading import read_model_folder

    folder, meta = read_model_folder(cfg.model)
    resolve(cfg.direction, model_directions(meta, folder))


def _portrait(size: int):
    """A fixed toon portrait (identity seed 3) at `size`, rendered once: drawing it is not part of an edit."""
    from PIL import Image

    from pedit.toon.world import render

    if size not in _PORTRAITS:
        _PORTRAITS[size] = Image.fromarray(render(3, size=size))
    return _PORTRAITS[size]


_PORTRAITS: dict = {}


def bench_options(editor, cfg: BenchConfig):
    """The EditOptions a benched edit runs: the bench's sampling settings over the model's defaults for the
    direction (pedit.json's mask and sampling settings), as `pedit edit` lays its flags (Editor.options_for)."""
    return editor.options_for(cfg.direction, cfg.sampling)


def time_edit(editor, cfg: BenchConfig, timer: Timer) -> None:
    """One edit through the editor's own stages (Editor.edit's path), with a timer around each stage."""
    from pedit.edit.editor import uint8_to_tensor
    from pedit.data.pairs import square_rgb

    options = bench_options(editor, cfg)
    direction = editor.direction(cfg.direction)
    image = _portrait(editor.resolution)

    def step(job):
        rows = job.rows()
        job.advance(editor.denoise(rows.z_in, rows.t, rows.context))

    with timer("edit"):
        original = square_rgb(image, editor.resolution)
        editor.forget_prompts()  # a new direction's prompts are part of the work
        with timer("encode"):
            cond = editor.conditions(uint8_to_tensor(original), direction)
        job = editor.job([cond], [options])
        if job.phase == "mask":
            with timer("mask"):
                while job.phase == "mask":
                    step(job)
        with timer("steps"):
            while not job.done:
                step(job)
        with timer("decode"):
            raw = editor.decode(job.z_0[0])
        editor.finish(original, raw, job, 0)


def unet_flops(editor) -> int:
    """FLOPs of one eager 5-row U-Net call (one sampling step) at the model's shapes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pedit.export.specs import dims_of, network_specs, random_inputs

    dims = dims_of(editor.model)
    spec = network_specs(dims)["unet"]
    mcdm = editor.model.mcdm
    x = random_inputs(spec, dims, 5, seed=0, dtype=mcdm.dtype)
    x = {k: v.to(mcdm.unet.device) for k, v in x.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        mcdm(x["z_in"], x["t"], x["context"])  # a student's rows count its scale embedding too
    return int(counter.get_total_flops())


def edit_rows(cfg: BenchConfig, scheduler_config: dict, distilled: bool = False) -> int:
    """U-Net rows one benched edit evaluates (pedit.edit.rows.edit_rows): 2 a mask draw (rows 3-4),
    5 a guided step (2 for a distilled student), 2 a step outside the guidance interval."""
    from pedit.edit.editor import EditOptions
    from pedit.edit.rows import edit_rows as rows_of
    from pedit.edit.mask import MaskConfig
    from pedit.edit.sampler import make_scheduler

    s = cfg.sampling
    options = EditOptions(steps=s.steps, scheduler=s.scheduler, use_mask=s.use_mask,
                          mask=MaskConfig(n_noise=s.mask_noises), guidance_interval=s.guidance_interval)
    return rows_of(options, make_scheduler(s.scheduler, scheduler_config), distilled)


IP2P_ROWS_PER_STEP = 3  # text+image, image only, neither


def _median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def bench_backend(cfg: BenchConfig, backend: str, log: Callable[[str], None]) -> tuple[dict, object]:
    import torch

    t0 = time.perf_counter()
    editor = _load(cfg, backend, log)
    load_s = time.perf_counter() - t0
    device = editor.model.mcdm.unet.device
    warm = Timer(device)
    t0 = time.perf_counter()
    time_edit(editor, cfg, warm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    for _ in range(max(0, cfg.warmup - 1)):
        time_edit(editor, cfg, Timer(device))
    timer = Timer(device)
    for i in range(cfg.repeats):
        time_edit(editor, cfg, timer)
        log(f"{backend}: run {i + 1}/{cfg.repeats}")
    spans = timer.seconds()
    row = {"load_s": round(load_s, 3), "first_edit_s": round(first_s, 3)}
    for stage in STAGES:
        if stage in spans:
            row[f"{stage}_ms"] = round(_median_ms(spans[stage]), 3)
    row["step_ms"] = round(row["steps_ms"] / cfg.sampling.steps, 3)
    return row, editor


def time_ip2p(editor, cfg: BenchConfig, log: Callable[[str], None]) -> dict:
    """diffusers' InstructPix2Pix pipeline on our U-Net weights, VAE and scheduler: same steps and resolution."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionInstructPix2PixPipeline

    from pedit.model.distilled import is_student, plain_unet

    parts, unet = editor.model.parts, editor.model.mcdm.unet
    if is_student(unet):  # the pipeline cannot feed a scale embedding; the same U-Net without it
        unet = plain_unet(unet)
    pipe = StableDiffusionInstructPix2PixPipeline(  # diffusers' own DDIM: the pipeline needs its whole interface
        vae=parts.vae, text_encoder=None, tokenizer=None, unet=unet,
        scheduler=DDIMScheduler.from_config(parts.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    prompt = editor._prompt("a photo of a person laughing").to(unet.dtype)  # (1, 77, D), prompt_embeds skip the tokenizer
    negative = editor._prompt("").to(unet.dtype)
    image = _portrait(editor.resolution)
    timer = Timer(unet.device)
    steps = cfg.ip2p_steps or cfg.sampling.steps

    def run():
        with timer("ip2p"):
            pipe(image=image, prompt_embeds=prompt, negative_prompt_embeds=negative, num_inference_steps=steps,
                 guidance_scale=7.5, image_guidance_scale=1.5, output_type="np",
                 generator=torch.Generator(unet.device).manual_seed(cfg.sampling.seed))

    for _ in range(cfg.warmup):
        run()
    timer.spans.clear()
    for i in range(cfg.repeats):
        run()
        log(f"ip2p: run {i + 1}/{cfg.repeats}")
    return {"edit_ms": round(_median_ms(timer.seconds()["ip2p"]), 3), "unet_rows_per_step": IP2P_ROWS_PER_STEP,
            "unet_rows_per_edit": IP2P_ROWS_PER_STEP * steps, "steps": steps, "mask": False}


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Bench every backend of cfg (and InstructPix2Pix); returns the JSON-able report."""
    import platform

    import torch

    from pedit.edit.guidance import PROMPT_ROWS
    from pedit.export.pipeline import tool_versions

    check_output(cfg)
    check_direction(cfg)
    cfg = with_sampling(cfg)  # steps, scheduler and interval as given, else the model folder's
    report = {"config": asdict(cfg), "tools": tool_versions(), "backends": {}}
    editor = None
    for backend in cfg.backends:
        log(f"{backend}: loading")
        row, editor = bench_backend(cfg, backend, log)
        report["backends"][backend] = row
    device = editor.model.mcdm.unet.device
    report["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    report["precision"] = str(editor.model.mcdm.unet.dtype).removeprefix("torch.")
    report["resolution"] = editor.resolution
    report["model"] = str(editor.model.path)
    flops = unet_flops(editor)
    report["unet_flops_per_step"] = flops
    per_row = flops / 5  # the 5-row call's FLOPs: linear in the batch
    report["distilled"] = editor.distilled  # a student (pedit distill): 2 rows a step, not 5
    report["unet_rows_per_edit"] = edit_rows(cfg, editor.model.parts.scheduler_config, editor.distilled)
    report["unet_flops_per_edit"] = round(per_row * report["unet_rows_per_edit"])
    # The steps' rows (a step outside the guidance interval takes 1-2 rows, not 5): what their time bought.
    step_rows = report["unet_rows_per_edit"] - (PROMPT_ROWS * cfg.sampling.mask_noises if cfg.sampling.use_mask else 0)
    for row in report["backends"].values():
        row["tflops_per_s"] = round(per_row * step_rows / (row["steps_ms"] / 1000) / 1e12, 4)
        row["unet_rows_per_edit"] = report["unet_rows_per_edit"]
        row["unet_flops_per_edit"] = report["unet_flops_per_edit"]
    if cfg.vs_ip2p:
        log("ip2p: timing diffusers' InstructPix2Pix pipeline")
        report["ip2p"] = time_ip2p(editor, cfg, log)
        report["ip2p"]["unet_flops_per_edit"] = round(per_row * report["ip2p"]["unet_rows_per_edit"])
        for row in report["backends"].values():
            row["speedup_vs_ip2p"] = round(report["ip2p"]["edit_ms"] / row["edit_ms"], 3)
    if cfg.output:
        from pedit.files import write_text_atomic

        write_text_atomic(Path(cfg.output), json.dumps(report, indent=2), overwrite=cfg.overwrite)
    return report


def with_sampling(cfg: BenchConfig) -> BenchConfig:
    """cfg with each unset sampling field filled in: from the model folder's pedit.json "sampling" with
    "sampling_by_task" for cfg.direction's task (pedit.model.sampling_settings; --arch sd15 and folders without it: 20 DDIM steps, all guided), the
    mask's draws and split from its mask settings for cfg.direction (else 10 draws in one call), and
    InstructPix2Pix's steps from the steps given, else 20."""
    from dataclasses import replace

    from pedit.model.sampling_settings import resolved, sampling_for

    from pedit.model.distilled import check_meta_scales

    from pedit.edit.mask import MaskConfig
    from pedit.edit.options import mask_for

    s, meta, mask, task = cfg.sampling, {}, MaskConfig(), None  # sd15: 10 draws, all in one call
    if cfg.arch == "model":
        from pedit.data.directions import model_directions, resolve
        from pedit.model.loading import read_model_folder
        from pedit.model.mask_settings import mask_config_for

        folder, meta = read_model_folder(cfg.model)
        direction = resolve(cfg.direction, model_directions(meta, folder))
        mask, task = mask_config_for(meta, direction), direction.task
    mask = mask_for(mask, s)  # the settings over the folder's, as the edit lays them
    sampler = resolved(s, sampling_for(meta, task))  # the direction's task's; sd15: no pedit.json, the paper's
    check_meta_scales(meta, (sampler.s_s, sampler.s_im, sampler.s_p), sampler.guidance_interval)  # a student's range
    filled = replace(s, steps=sampler.steps, scheduler=sampler.scheduler, guidance_interval=sampler.guidance_interval,
                     mask_noises=mask.n_noise, mask_batch=mask.batch)
    return replace(cfg, sampling=filled, ip2p_steps=(cfg.ip2p_steps or s.steps or 20) if cfg.vs_ip2p else None)


def check_output(cfg: BenchConfig) -> None:
    """Before any work: -o names a file that can be written, new unless `overwrite`."""
    from pedit.files import exists_error

    if not cfg.output:
        return
    path = Path(cfg.output)
    if path.is_dir():
        raise OutputError(f"-o {path} is a folder; bench writes one JSON file.")
    if not path.parent.is_dir():
        raise OutputError(f"Folder {path.parent} of -o {path} does not exist; create it first.")
    if path.exists() and not cfg.overwrite:
        raise exists_error(path)


def table_rows(report: dict) -> list[list[str]]:
    """Rows of the summary table: one per backend (+ ip2p), in milliseconds, with rows and GFLOPs per edit."""
    rows = []
    for name, r in report["backends"].items():
        rows.append([name, f"{r['load_s']:.2f}", f"{r.get('encode_ms', 0):.1f}", f"{r.get('mask_ms', 0):.1f}",
                     f"{r['step_ms']:.2f}", f"{r.get('decode_ms', 0):.1f}", f"{r['edit_ms']:.1f}",
                     str(r.get("unet_rows_per_edit", "–")), _gflops(r.get("unet_flops_per_edit")),
                     f"{r['tflops_per_s']:.3f}", f"{r['speedup_vs_ip2p']:.2f}x" if "speedup_vs_ip2p" in r else "–"])
    if "ip2p" in report:
        ip = report["ip2p"]
        rows.append(["ip2p", "–", "–", "–", "–", "–", f"{ip['edit_ms']:.1f}", str(ip.get("unet_rows_per_edit", "–")),
                     _gflops(ip.get("unet_flops_per_edit")), "–", "1.00x"])
    return rows


def _gflops(flops) -> str:
    return "–" if flops is None else f"{flops / 1e9:.2f}"


TABLE_HEAD = ("backend", "load s", "encode", "mask", "step", "decode", "edit", "U-Net rows", "GFLOP/edit", "TFLOP/s",
              "vs ip2p")  # times in ms
