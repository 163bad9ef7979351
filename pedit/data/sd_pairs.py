"""`pedit gen-pairs --source sd`: pairs from Stable Diffusion, side by side (paper §3.2, Eq. 2).

Each pair is one latent of h × 2w denoised once: per step one batched U-Net call (4 rows per pair,
all pairs of the batch) gives the terms of Eq. 2 (pedit.data.composable), an OpenPose ControlNet
sees the same skeleton in both halves (pedit.data.poses), and an identity from a real portrait
conditions every conditioned row (IP-Adapter; pedit.data.sd_models). The loop is the project's one
sampler (pedit.edit.sampler.sample), passed in by the caller: the data wing sits below the edit
wing and does not import it.

Folder guarantees as the toon source: a pair's seed, pose, identity and subject depend only on its
index (pedit.data.sd_plan); a rerun skips ids already written or rejected; `shard=(i, n)` takes
indices ≡ i mod n; a folder refuses to mix settings or changed input files. Pairs scoring below
`min_score` (layout) or `min_clip`, or above `max_identity_distance`, go to `rejected.jsonl`
with their scores, never to `metadata.jsonl`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pedit.data import pair_scores
from pedit.data.composable import N_TERMS, PairStrengths, pair_eps
from pedit.data.directions import all_directions, resolve
from pedit.data.gen_pairs import claim_folder
from pedit.data.pairs import PairWriter, locked
from pedit.data.poses import load_poses, pair_pose_image
from pedit.data.sd_plan import initial_latent, max_seed, noise_seed, plan_pair
from pedit.errors import ConfigError
from pedit.files import fingerprint
from pedit.validate import check_int, check_number, check_seed
from pedit.vae import decode_latents

REJECTED = "rejected.jsonl"
# Settings that may differ between the runs and shards filling one folder. Not precision: fp16 and
# fp32 give other images, and a folder holds one kind of pair (issue 19).
RUN_ONLY = ("output", "shard", "device", "batch_size", "contact_sheet")
IP_ADAPTER_FACE = ("h94/IP-Adapter", "models", "ip-adapter-full-face_sd15.safetensors", "image_encoder")


@dataclass(frozen=True)
class SDPairsConfig:
    output: str
    n: int
    base: str
    controlnet: str | None = "lllyasviel/sd-controlnet-openpose"
    directions: tuple[str, ...] = ("flower", "sheep", "santa", "royal")
    directions_file: str | None = None
    resolution: int = 512  # H = W of each half; the canvas is H × 2W
    steps: int = 30
    seed: int = 0
    shard: tuple[int, int] = (0, 1)
    batch_size: int = 1  # pairs per U-Net call (4 rows each)
    s_d: float = PairStrengths.s_d
    s_a: float = PairStrengths.s_a
    s_b: float = PairStrengths.s_b
    guidance_scale: float = PairStrengths.cfg
    pose: str = "builtin"  # builtin | a keypoints .json | a folder of photos
    pose_annotators: str | None = None
    pose_jitter: bool = True
    use_pose: bool = True  # --no-pose: the paper's Figure 3(b)
    controlnet_scale: float = 1.0
    identity_dir: str | None = None
    use_identity: bool = True  # --no-identity: Figure 3(c)
    ip_adapter: tuple[str, str, str, str] = IP_ADAPTER_FACE  # repo, subfolder, weight file, image encoder folder
    ip_adapter_scale: float = 0.6
    identity_guidance: float | None = None  # s_id of the nested form (docs/gen-pairs.md); None: one CFG, 4 rows
    min_score: float | None = None  # layout score below it → rejected
    min_clip: float | None = None  # CLIP directional similarity below it → rejected (needs clip)

    max_identity_distance: float | None = None  # identity distance above it (or no face) → rejected
    clip: str | None = None
    contact_sheet: int = 8  # pairs on the contact sheet
    device: str | None = None
    precision: str = "auto"  # auto: fp16 on CUDA, fp32 on the CPU
    allow_pickle: bool = False

    def __post_init__(self):
        for name in ("output", "base"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        check_int("n", self.n, 1)
        check_int("resolution", self.resolution, 8, 8192)
        if self.resolution % 8:
            raise ConfigError(f"resolution must be a multiple of 8 (SD 1.x: of 64), got {self.resolution}")
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("contact_sheet", self.contact_sheet, 0)
        check_seed("seed", self.seed, max_seed(self.n))
        if not (isinstance(self.shard, tuple) and len(self.shard) == 2):
            raise ConfigError(f"shard must be (I, N), got {self.shard!r}")
        check_int("shard count", self.shard[1], 1)
        check_int("shard index", self.shard[0], 0, self.shard[1] - 1)
        PairStrengths(self.s_d, self.s_a, self.s_b, self.guidance_scale)  # validates them
        check_number("controlnet_scale", self.controlnet_scale, 0)
        check_number("ip_adapter_scale", self.ip_adapter_scale, 0)
        if self.identity_guidance is not None:
            check_number("identity_guidance (s_id of --nested-identity)", self.identity_guidance, 0)
        if self.use_pose and not self.controlnet:
            raise ConfigError("poses need an OpenPose ControlNet: pass --controlnet MODEL, or --no-pose")
        if self.min_score is not None:
            check_number("min_score (a layout score)", self.min_score, 0, 1)
        if self.min_clip is not None:
            check_number("min_clip (a cosine similarity)", self.min_clip, -1, 1)
            if self.clip is None:
                raise ConfigError("min_clip needs a CLIP model (--clip MODEL)")
        if self.max_identity_distance is not None:
            check_number("max_identity_distance", self.max_identity_distance, 0)
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        available = all_directions(self.directions_file)
        if not self.directions:
            raise ConfigError("no directions given")
        for name in self.directions:
            resolve(name, available)  # DirectionError listing the available ones

    @property
    def strengths(self) -> PairStrengths:
        return PairStrengths(self.s_d, self.s_a, self.s_b, self.guidance_scale)


def _rejected_ids(out: Path) -> set[str]:
    path = out / REJECTED
    if not path.exists():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def _append_line(path: Path, row: dict) -> None:
    with locked(path) as fh:  # one row, one write, one writer at a time
        fh.write((json.dumps(row) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _dtype(cfg: SDPairsConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.precision]


@torch.no_grad()
def encode_prompts(parts, prompts: list[str], cache: dict) -> torch.Tensor:
    """(len(prompts), 77, D) text embeddings, each prompt encoded once per run."""
    todo = [p for p in dict.fromkeys(prompts) if p not in cache]
    if todo:
        tok = parts.tokenizer(todo, padding="max_length", max_length=parts.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")
        emb = parts.text_encoder(tok.input_ids.to(parts.text_encoder.device))[0]
        cache.update(zip(todo, emb))
    return torch.stack([cache[p] for p in prompts])


def make_denoise(parts, pose_rows: torch.Tensor | None, image_embed_rows: torch.Tensor | None,
                 controlnet_scale: float) -> Callable:
    """`denoise(z_in, t, context) -> eps` for the sampler: ControlNet + U-Net on all 4B rows at once.

    z_in (4B, 4, h, 2w); context (4B, 77, D); pose_rows (4B, 3, H, 2W); image_embed_rows (4B, T, D').
    """
    added = None if image_embed_rows is None else {"image_embeds": [image_embed_rows]}

    def denoise(z_in, t, context):
        z_in, context = z_in.to(parts.unet.dtype), context.to(parts.unet.dtype)
        down = mid = None
        if pose_rows is not None:
            down, mid = parts.controlnet(z_in, t, encoder_hidden_states=context, controlnet_cond=pose_rows,
                                         conditioning_scale=controlnet_scale, return_dict=False)
        eps = parts.unet(z_in, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, added_cond_kwargs=added, return_dict=False)[0]
        return eps.float()

    return denoise


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _settings(cfg: SDPairsConfig) -> dict:
    """The config, plus what the files it names hold: a pair depends on the identity photos, the
    directions file and the pose file or photos, so changing them must not go unnoticed."""
    settings = json.loads(json.dumps(asdict(cfg)))
    named = {"directions_file": cfg.directions_file,
             "pose": cfg.pose if cfg.use_pose and cfg.pose != "builtin" else None,
             "identity_dir": cfg.identity_dir if cfg.use_identity else None}
    settings["input_files"] = {k: fingerprint(v) for k, v in named.items() if v}
    return settings


def _device(cfg: SDPairsConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def generate_sd_pairs(cfg: SDPairsConfig, sample: Callable, make_scheduler: Callable,
                      progress: Callable[[int, int, int], None] | None = None,
                      log: Callable[[str], None] | None = None,
                      identity_encoder: Callable | None = None,
                      read_photo: Callable[[Path], np.ndarray] | None = None) -> Path:
    """Write (this shard's share of) `cfg.n` SD pairs into `cfg.output`; returns the folder.

    `sample` and `make_scheduler` are pedit.edit.sampler's (the one denoising loop, passed in).
    `progress(done, total, made)`: pairs of this shard finished (written, rejected or found done),
    of them `made` generated by this run. Every input is checked before anything is written.
    `identity_encoder(parts) -> IdentityEncoder` replaces the IP-Adapter (the ELITE seam: an
    encoder whose `IdentityTerms.tokens` are appended to the prompt embeddings).
    `read_photo(path) -> (H, W, 3) uint8` decodes the identity and pose photos; the CLI passes
    pedit.photos' loader (the photos wing sits above this one, so it is passed in, not imported).
    """
    from pedit.data.sd_models import IPAdapterIdentity, identity_faces, load_sd_parts
    from pedit.files import check_output_not_input

    out = Path(cfg.output)
    say = log or (lambda _msg: None)
    settings = _settings(cfg)
    check_output_not_input(out, {"--base": cfg.base, "--controlnet": cfg.controlnet, "--pose": cfg.pose,
                                 "--pose-annotators": cfg.pose_annotators, "--identity-dir": cfg.identity_dir,
                                 "--directions-file": cfg.directions_file})
    claim_folder(out, settings, RUN_ONLY, write=False)  # a mixed folder is refused before the expensive work
    available = all_directions(cfg.directions_file)
    directions = [resolve(name, available) for name in cfg.directions]
    poses = load_poses(cfg.pose, cfg.pose_annotators, read_photo, cfg.allow_pickle) if cfg.use_pose else None
    faces = identity_faces(cfg.identity_dir, read_photo) if cfg.use_identity and cfg.identity_dir else []
    if cfg.max_identity_distance is not None and not pair_scores.identity_available():
        raise ConfigError(f"max_identity_distance needs the face model: {pair_scores.face_model_note()}")
    device = _device(cfg)
    dtype = _dtype(cfg, device)
    parts = load_sd_parts(cfg.base, cfg.controlnet if cfg.use_pose else None,
                          cfg.ip_adapter if faces and identity_encoder is None else None, cfg.ip_adapter_scale,
                          device, dtype, cfg.allow_pickle)
    timesteps = int(parts.scheduler_config.get("num_train_timesteps", 1000))
    if cfg.steps > timesteps:
        raise ConfigError(f"steps must be between 1 and {timesteps} (this base's noise schedule has {timesteps} "
                          f"timesteps), got {cfg.steps}")
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    h = w = cfg.resolution // factor
    unet_factor = 2 ** (len(parts.unet.config.block_out_channels) - 1)
    if w % unet_factor:
        raise ConfigError(f"resolution {cfg.resolution}: the latent side {w} must be a multiple of {unet_factor} "
                          f"for this U-Net (use a multiple of {factor * unet_factor}).")
    clip = pair_scores.ClipDirection(cfg.clip, device, cfg.allow_pickle) if cfg.clip else None
    encoder = None if not faces else identity_encoder(parts) if identity_encoder else IPAdapterIdentity(parts.pipe)
    for note in filter(None, [pair_scores.face_model_note(),
                              None if clip else "CLIP directional score skipped: no --clip model given"]):
        say(note)

    claim_folder(out, settings, RUN_ONLY)
    writer = PairWriter(out)
    rejected = _rejected_ids(out)
    mine = [i for i in range(cfg.n) if i % cfg.shard[1] == cfg.shard[0]]
    todo = [i for i in mine if f"{i:06d}" not in writer.done and f"{i:06d}" not in rejected]
    done, made = len(mine) - len(todo), 0
    if progress is not None:
        progress(done, len(mine), made)
    text_cache: dict = {}
    identity_cache: dict = {}
    for start in range(0, len(todo), cfg.batch_size):
        plans = [plan_pair(cfg, i, directions, poses, len(faces)) for i in todo[start:start + cfg.batch_size]]
        images, pose_halves, finite = _generate_batch(cfg, parts, plans, faces, encoder, identity_cache, text_cache,
                                                      sample, make_scheduler, h, w, device)
        for plan, image, pose_half, ok in zip(plans, images, pose_halves, finite):
            _finish_pair(cfg, out, writer, plan, image, pose_half, faces, clip, encoder, ok)
            done, made = done + 1, made + 1
            if progress is not None:
                progress(done, len(mine), made)
    pair_scores.write_contact_sheet(out, cfg.contact_sheet)
    return out


def _identity_rows(plans, faces, encoder, cache, nested: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The identity's share of the 4B rows, block-wise like the rows of Eq. 2: IP-Adapter
    embeddings (4B, 1, T, D) with the null identity in the unconditional block, and/or word
    embeddings (4B, K, D_text) to append to the prompts, zeros in the unconditional block."""
    if encoder is None:
        return None, None
    terms = []
    for plan in plans:
        if plan.identity not in cache:
            if len(cache) >= 256:  # many identities cycle through: keep memory bounded
                cache.clear()
            cache[plan.identity] = encoder.encode(faces[plan.identity][1])
        terms.append(cache[plan.identity])
    image_rows = token_rows = None
    if terms[0].image_embeds is not None:
        null = torch.cat([t.null_image_embeds for t in terms])  # (B, 1, T, D): one image per row
        cond = torch.cat([t.image_embeds for t in terms])
        image_rows = torch.cat([null, cond, cond, cond] + [cond] * nested)
    if terms[0].tokens is not None:
        words = torch.cat([t.tokens for t in terms])  # (B, K, D_text)
        token_rows = torch.cat([torch.zeros_like(words), words, words, words] + [words] * nested)
    return image_rows, token_rows


@torch.no_grad()
def _generate_batch(cfg, parts, plans, faces, encoder, identity_cache, text_cache, sample, make_scheduler, h, w, device):
    """Denoise one batch of pairs; returns the (B, H, 2W, 3) uint8 canvases, the pose halves, and
    per pair whether its decode was finite (a NaN canvas is never a pair: pair_scores.canvas_problem)."""
    B, H, W = len(plans), cfg.resolution, cfg.resolution
    z = torch.cat([initial_latent(cfg, p.index, h, w, device) for p in plans])  # (B, 4, h, 2w)
    nested = cfg.identity_guidance is not None  # a 5th block e(∅, id) right after e(∅, ∅): [∅∅, ∅·id, p, p_a, p_b]
    rows = N_TERMS + nested
    prompts = ([""] * B * (1 + nested) + [p.prompts["p"] for p in plans] + [p.prompts["p_a"] for p in plans]
               + [p.prompts["p_b"] for p in plans])
    context = encode_prompts(parts, prompts, text_cache)  # (rows·B, 77, D)
    pose_halves = [None] * B
    pose_rows = None
    if cfg.use_pose:
        canvases = [pair_pose_image(p.pose, H, W) for p in plans]  # same skeleton in both halves
        pose_halves = [c[:, :W] for c in canvases]
        pose = torch.from_numpy(np.stack(canvases)).permute(0, 3, 1, 2).float().div(255)  # (B, 3, H, 2W) in [0, 1]
        pose_rows = pose.repeat(rows, 1, 1, 1).to(device, parts.unet.dtype)  # (rows·B, 3, H, 2W)
    image_rows, token_rows = _identity_rows(plans, faces, encoder, identity_cache, nested)
    if image_rows is not None:
        image_rows = image_rows.to(device, parts.unet.dtype)
    if token_rows is not None:  # ELITE-style: identity words after the prompt's 77 tokens
        context = torch.cat([context, token_rows.to(context)], dim=1)  # (4B, 77 + K, D)
    denoise = make_denoise(parts, pose_rows, image_rows, cfg.controlnet_scale)
    scheduler = make_scheduler("ddim", parts.scheduler_config)
    strengths = cfg.strengths
    z_0 = sample(denoise, scheduler, z, None, context, lambda eps: pair_eps(eps, strengths, cfg.identity_guidance),
                 cfg.steps, rows=rows)
    # fp16 can overflow in the VAE decoder: decode_latents decodes again in fp32 (as editing does)
    decoded = decode_latents(parts.vae, z_0, parts.vae_fp32)  # (B, 3, H, 2W) in [-1, 1]
    finite = torch.isfinite(decoded).flatten(1).all(dim=1).tolist()  # (B,) one host sync per batch
    return _to_uint8(torch.nan_to_num(decoded)), pose_halves, finite


def _finish_pair(cfg, out, writer, plan, image, pose_half, faces, clip, encoder, finite: bool = True) -> None:
    """Score one pair; write it (images, then its metadata row) or record it as rejected."""
    W = cfg.resolution
    x_A, x_B = np.ascontiguousarray(image[:, :W]), np.ascontiguousarray(image[:, W:])
    pair_id = f"{plan.index:06d}"
    broken = pair_scores.canvas_problem(x_A, x_B, finite)
    if broken:  # a black or NaN canvas scores ≈ 1 on the layout score: never score it, never keep it
        _append_line(out / REJECTED, {"id": pair_id, "scores": None, "why": broken})
        return
    prompts = plan.prompts
    scores = {"layout": round(pair_scores.layout_score(x_A, x_B), 4),
              "clip_direction": None if clip is None else round(clip(x_A, x_B, prompts["p_a"], prompts["p_b"]), 4),
              "identity_distance": pair_scores.identity_distance(x_A, x_B)}
    reasons = []
    if cfg.min_score is not None and scores["layout"] < cfg.min_score:
        reasons.append(f"layout {scores['layout']} < {cfg.min_score}")
    if cfg.min_clip is not None and scores["clip_direction"] < cfg.min_clip:
        reasons.append(f"clip_direction {scores['clip_direction']} < {cfg.min_clip}")
    if cfg.max_identity_distance is not None:
        distance = scores["identity_distance"]
        if distance is None:
            reasons.append("identity_distance: no face found in a half")
        elif distance > cfg.max_identity_distance:
            reasons.append(f"identity_distance {distance} > {cfg.max_identity_distance}")
    if reasons:
        _append_line(out / REJECTED, {"id": pair_id, "scores": scores, "why": "; ".join(reasons)})
        return
    d = plan.direction
    row = {
        "id": pair_id, "direction": d.name, "task": d.task, **prompts, "subject": plan.subject,
        # the direction's own prompts, "person" where this pair names its subject: what a model
        # trained on the folder records (pedit.data.pairs.direction_of), not this pair's subject
        "template": {"p": d.p, "p_a": d.p_a, "p_b": d.p_b},
        "seed": noise_seed(cfg.seed, plan.index), "source": "sd", "base": cfg.base,
        "controlnet": cfg.controlnet if cfg.use_pose else None,
        "pose": None if plan.pose is None else {"id": plan.pose.id, "source": cfg.pose, "jitter": plan.pose_jitter},
        "identity": None if plan.identity is None else {
            "file": faces[plan.identity][0], "encoder": encoder.name,
            "adapter": "/".join(cfg.ip_adapter[:3]) if encoder.name == "ip-adapter" else None},
        "strengths": {"s_d": cfg.s_d, "s_a": cfg.s_a, "s_b": cfg.s_b},
        "scales": {"guidance": cfg.guidance_scale, "controlnet": cfg.controlnet_scale if cfg.use_pose else None,
                   "ip_adapter": cfg.ip_adapter_scale if plan.identity is not None and encoder.name == "ip-adapter" else None},
        "steps": cfg.steps, "resolution": cfg.resolution, "scores": scores,
    }
    images = {"x_A": x_A, "x_B": x_B}
    if pose_half is not None:
        images["pose_image"] = pose_half  # images/<id>_pose_image.png, the half the ControlNet saw twice
    writer.write(row, images)
