"""Loading: base models (a local diffusers folder or a hub id) and MCDM model folders (saving one:
pedit.model.saving).

Model folders and base folders get shared and downloaded, so they are untrusted input: weights load
from safetensors only, and a component whose weights exist only as a pickle (`.bin`, `.pt`, `.ckpt`,
...) is refused unless the user passes `--allow-pickle` (pickle files can run code when loaded).

A model folder (docs/design-notes.md, "Conditions and the model"): `unet/`, `image_projector/`,
`pedit.json`, plus copies of the frozen parts (`vae/`, `text_encoder/`, `tokenizer/`,
`image_encoder/`, `scheduler/`), so it works offline on its own, and its model card `README.md`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pedit.data.directions import model_directions
from pedit.errors import ModelError, UnsafeModelError
from pedit.files import regular_file_problem
from pedit.model.mask_refiner import check_refiners
from pedit.model.mask_settings import check_mask_settings
from pedit.model.paths import BUNDLED_MODELS, bundled_model_path, model_path  # noqa: F401 (imported from here too)
from pedit.model.sampling_settings import check_sampling_settings
from pedit.model.distilled import FEATURES, check_distilled_settings, is_student
from pedit.validate import NUMBER, check_section

# pedit.model.mcdm imports diffusers (seconds): imported where a model is built, so that a cached
# model (pedit.model.traced) can be checked with the functions here without it.
if TYPE_CHECKING:
    from pedit.model.mcdm import MCDM, FrozenParts

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FROZEN = ("vae", "text_encoder", "tokenizer", "image_encoder", "scheduler")
BASE_REQUIRED = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
MODEL_REQUIRED = ("pedit.json", "unet", "image_projector", *FROZEN)
DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"
FORMAT_VERSION = 1
MAX_RESOLUTION = 4096  # pixels a side; far above any Stable Diffusion model, far below a memory bomb


def bundled_base_path() -> Path:
    """The toon base (tiny frozen parts made for the toon world) used to train the bundled model."""
    return Path(__file__).parents[1] / "assets" / "toon-base"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_source(source: str | Path, what: str, required: tuple[str, ...]) -> Path:
    """A local folder for `source`: the folder itself, or the hub cache's snapshot of a hub id.

    Never waits on a network that is not there: the local cache is tried first, and the hub only
    when HF_HUB_OFFLINE is not set.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            if path.suffix.lower() in PICKLE_SUFFIXES + (".safetensors",):
                raise ModelError(
                    f"{what} {path} is a single checkpoint file; pedit needs a diffusers folder "
                    f"({', '.join(required)}). Convert it with diffusers' conversion scripts first."
                )
            raise ModelError(f"{what} {path} is a file; expected a folder with {', '.join(required)}.")
        _check_layout(path, what, required)
        check_links(path, what)
        return path
    if str(source).count("/") != 1 or str(source).startswith((".", "/", "~")):
        raise ModelError(f"{what} {source!r} is neither an existing folder nor a hub id like 'owner/name'.")
    from huggingface_hub import snapshot_download

    patterns = hub_patterns(required)
    try:
        folder = Path(snapshot_download(str(source), allow_patterns=patterns, local_files_only=True))
    except Exception:
        if _offline():
            raise ModelError(
                f"{what} {source!r} is not in the local hub cache and HF_HUB_OFFLINE is set. "
                f"Download it on a connected machine (`hf download {source}`) or pass a local diffusers folder."
            ) from None
        try:
            folder = Path(snapshot_download(str(source), allow_patterns=patterns))
        except Exception as e:
            raise ModelError(
                f"Could not download {what} {source!r} ({type(e).__name__}). "
                "Check the id and your connection, or pass a local diffusers folder."
            ) from None
    _check_layout(folder, what, required)
    check_links(folder, what)
    return folder


# The files from_pretrained reads: configs, tokenizer files and the default (non-variant) weights,
# single-file or sharded. Not fp16/ema/non_ema variants, not single-file checkpoints, not pickles.
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model-*-of-*.safetensors",
            "diffusion_pytorch_model.safetensors.index.json", "model.safetensors", "model-*-of-*.safetensors",
            "model.safetensors.index.json")
_CONFIGS = ("config.json", "scheduler_config.json", "preprocessor_config.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.json", "added_tokens.json")


def hub_patterns(required: tuple[str, ...]) -> list[str]:
    """allow_patterns for snapshot_download: only the subfolders in `required` (or the repo root for
    files), and in them only what is loaded. A Stable Diffusion repo also holds multi-GB single-file
    checkpoints and fp16/ema variants that pedit never reads."""
    folders = [name for name in required if "." not in name] or [""]
    patterns = ["model_index.json"]
    for folder in folders:
        prefix = f"{folder}/" if folder else ""
        patterns += [prefix + name for name in _WEIGHTS + _CONFIGS]
    if "image_encoder" not in folders and folders != [""]:  # a base may bring its own CLIP vision encoder
        patterns += [f"image_encoder/{name}" for name in _WEIGHTS + _CONFIGS]
    return patterns


def check_links(folder: Path, what: str) -> None:
    """Every entry of an untrusted folder must stay inside it and be a regular file or folder.

    A link pointing outside (to ~/.ssh, to another model) would be followed and read; a FIFO would
    block loading forever. The one allowed exception is the hub cache's own layout, where a
    snapshot's files link into the same repository's `blobs/`.
    """
    root = Path(folder).resolve()
    container = root
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        container = root.parent.parent
    for dirpath, dirnames, filenames in os.walk(root):  # linked folders are listed here, not entered
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            rel = entry.relative_to(root)
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(container):
                    raise ModelError(f"{what} {folder}: {rel} is a link to {target}, outside the folder. "
                                     "pedit only reads files inside a model folder; copy the file in instead.")
            if name in filenames and (why := regular_file_problem(entry)) not in (None, "is missing"):
                raise ModelError(f"{what} {folder}: {rel} {why}; a model folder holds regular files only.")


def _check_layout(folder: Path, what: str, required: tuple[str, ...]) -> None:
    missing = [name for name in required if not (folder / name).exists()]
    if missing:
        raise ModelError(
            f"{what} {folder} is missing {', '.join(missing)}; expected a folder with {', '.join(required)} "
            "(a Stable Diffusion diffusers layout, or a folder written by `pedit train`)."
        )


def use_safetensors(folder: Path, allow_pickle: bool) -> bool:
    """True when `folder` has safetensors weights; pickle-only weights need allow_pickle."""
    if any(folder.glob("*.safetensors")):
        return True
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if not pickles:
        raise ModelError(f"{folder} has no weights (no .safetensors file).")
    if not allow_pickle:
        raise UnsafeModelError(
            f"{folder} has only pickle weights ({', '.join(pickles)}); pickle files can run code when loaded. "
            "Convert them to safetensors, or pass --allow-pickle if you trust the source."
        )
    return False


def _load(cls, folder: Path, allow_pickle: bool, what: str, **kwargs):
    """cls.from_pretrained(folder) with safetensors enforced and loading failures as ModelError."""
    if not folder.is_dir():
        raise ModelError(f"{what}: folder {folder} is missing.")
    safe = use_safetensors(folder, allow_pickle) if cls.__name__ not in ("CLIPTokenizer",) else None
    if safe is not None:
        kwargs["use_safetensors"] = safe
    try:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelError(f"{what} in {folder} could not be loaded: {first}") from None


def _quiet_libraries() -> None:
    """diffusers/transformers print progress bars and dtype notes while loading; pedit reports its own."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_frozen_parts(root: Path, allow_pickle: bool = False, image_encoder: Path | None = None) -> FrozenParts:
    """VAE, text encoder, tokenizer, CLIP vision encoder and scheduler config from a folder."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel

    from pedit.model.mcdm import CLIP_MEAN, CLIP_STD, FrozenParts

    _quiet_libraries()

    image_dir = image_encoder or root / "image_encoder"
    vae = _load(AutoencoderKL, root / "vae", allow_pickle, "VAE")
    text_encoder = _load(CLIPTextModel, root / "text_encoder", allow_pickle, "Text encoder")
    tokenizer = _load(CLIPTokenizer, root / "tokenizer", allow_pickle, "Tokenizer", model_max_length=77)
    vision = _load(CLIPVisionModel, image_dir, allow_pickle, "Image encoder")
    mean, std = CLIP_MEAN, CLIP_STD
    pre = image_dir / "preprocessor_config.json"
    if pre.exists():
        cfg = _read_json(pre, "Image preprocessor config")
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    sched_file = root / "scheduler" / "scheduler_config.json"
    if not sched_file.exists():
        raise ModelError(f"Scheduler config {sched_file} is missing.")
    for m in (vae, text_encoder, vision):
        m.requires_grad_(False).eval()
    return FrozenParts(vae, text_encoder, tokenizer, vision, _read_json(sched_file, "Scheduler config"), mean, std)


PREDICTION_TYPES = ("epsilon", "v_prediction")  # what train learns and the samplers read (pedit.train.loop)
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def check_scheduler_config(config: dict, where: Path) -> dict:
    """`config` if its noise schedule can work, else one ModelError line: diffusers would raise a
    6-line TypeError on `num_train_timesteps: 1.5`, and sample garbage with `prediction_type: "sample"`."""
    def bad(key, want):
        return ModelError(f"{where}: {key} must be {want}, got {config.get(key)!r}. Restore the file from the base "
                          "model it came from.")

    for key, lo in (("num_train_timesteps", 1), ("steps_offset", 0)):
        value = config.get(key, lo)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= 100_000:
            raise bad(key, f"an integer from {lo} to 100000")
    if (config.get("prediction_type") or "epsilon") not in PREDICTION_TYPES:
        raise bad("prediction_type", " or ".join(map(repr, PREDICTION_TYPES)))
    if config.get("beta_schedule", "linear") not in _BETA_SCHEDULES:
        raise bad("beta_schedule", "one of " + ", ".join(map(repr, _BETA_SCHEDULES)))
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    for key, value in (("beta_start", start), ("beta_end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise bad(key, "a number between 0 and 1")
    if start >= end:
        raise bad("beta_end", f"larger than beta_start ({start!r})")
    return config


def load_text_encoder(root: Path, allow_pickle: bool = False):
    """(tokenizer, text encoder) of a folder, for encoding prompts without the rest of the frozen parts."""
    from transformers import CLIPTextModel, CLIPTokenizer

    _quiet_libraries()
    tokenizer = _load(CLIPTokenizer, root / "tokenizer", allow_pickle, "Tokenizer", model_max_length=77)
    text_encoder = _load(CLIPTextModel, root / "text_encoder", allow_pickle, "Text encoder")
    return tokenizer, text_encoder.requires_grad_(False).eval()


def check_weights_allowed(root: Path, allow_pickle: bool) -> None:
    """The pickle rule of `load_model` without loading: pickle-only weights need allow_pickle."""
    for name in ("vae", "text_encoder", "image_encoder", "unet", "image_projector"):
        if not (root / name).is_dir():
            raise ModelError(f"{root / name} should be a folder of weights.")
        use_safetensors(root / name, allow_pickle)


def load_base(base: str | Path, allow_pickle: bool = False, image_encoder: str | None = None):
    """(base folder, FrozenParts) for training: a local SD folder or a hub id.

    The CLIP vision encoder comes from the base's `image_encoder/` when it has one (as the toon
    base does), else from `image_encoder` (default openai/clip-vit-large-patch14).
    """
    root = resolve_source(base, "Base model", BASE_REQUIRED)
    image_dir = None
    if image_encoder is not None or not (root / "image_encoder").exists():
        image_dir = resolve_source(image_encoder or DEFAULT_IMAGE_ENCODER, "Image encoder", ("config.json",))
    return root, load_frozen_parts(root, allow_pickle, image_dir)


def base_unet(root: Path, allow_pickle: bool = False, scratch: bool = False):
    """The base 4-channel U-Net: pretrained weights, or its config freshly initialised (`--init scratch`)."""
    from diffusers import UNet2DConditionModel

    if scratch:
        config = UNet2DConditionModel.load_config(root / "unet")
        return UNet2DConditionModel.from_config(config)
    unet_dir = root / "unet"
    if not any(p.suffix.lower() in PICKLE_SUFFIXES + (".safetensors",) for p in unet_dir.iterdir()):
        # The bundled toon base ships the U-Net's config only: its models are trained from scratch.
        raise ModelError(
            f"Base U-Net {unet_dir} has a config but no weights. Train from scratch with --init scratch, "
            "or continue from a trained model folder with --init-from MODEL."
        )
    return _load(UNet2DConditionModel, unet_dir, allow_pickle, "Base U-Net")


def check_shapes(mcdm: MCDM, parts: FrozenParts, where: Path) -> None:
    """The pieces of a model folder must fit together; say which do not."""
    unet, proj = mcdm.unet.config, mcdm.image_projector.config
    text_width = parts.text_encoder.config.hidden_size
    problems = []
    if unet.in_channels != 2 * parts.vae.config.latent_channels:
        problems.append(f"unet in_channels {unet.in_channels} != 2 x VAE latent channels {parts.vae.config.latent_channels}")
    if unet.cross_attention_dim != text_width:
        problems.append(f"unet cross_attention_dim {unet.cross_attention_dim} != text encoder width {text_width}")
    if proj.text_width != text_width:
        problems.append(f"image_projector text_width {proj.text_width} != text encoder width {text_width}")
    if proj.vision_width != parts.image_encoder.config.hidden_size:
        problems.append(
            f"image_projector vision_width {proj.vision_width} != image encoder width {parts.image_encoder.config.hidden_size}"
        )
    if proj.num_tokens != parts.num_image_tokens:
        problems.append(f"image_projector num_tokens {proj.num_tokens} != image encoder tokens {parts.num_image_tokens}")
    if is_student(mcdm.unet) and unet.projection_class_embeddings_input_dim != FEATURES:
        problems.append(f"unet scale embedding takes {unet.projection_class_embeddings_input_dim} features, pedit "
                        f"gives {FEATURES} (pedit.model.distilled)")
    if problems:
        raise ModelError(f"Model folder {where} has mismatched shapes: " + "; ".join(problems) + ".")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{what} {path} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path} must hold a JSON object.")
    return data


@dataclass
class LoadedModel:
    mcdm: MCDM
    parts: FrozenParts
    meta: dict  # pedit.json
    path: Path

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])


# Every top-level name of pedit.json, with its type (pedit.validate.check_section): a misspelled or unknown
# name is an error naming these, a null or wrong-typed value is one at load. A new setting is added here.
TOP_LEVEL = {
    "format": int, "pedit_version": str, "conventions": dict, "num_image_tokens": int, "frozen": dict, "base": str,
    "init": str, "resolution": int, "latent_factor": int, "directions": list, "steps_trained": int,
    "steps_trained_total": int, "prediction_type": str, "training": dict, "training_history": (str, list),
    "peak_gpu_memory_gib": NUMBER, "mask": dict, "mask_by_task": dict, "mask_by_direction": dict,
    "mask_tuning": (str, dict), "pixel_mask_tuning": (str, dict), "mask_refiner": str, "sampling": dict,
    "sampling_by_task": dict, "distilled": dict, "bundled": bool,
}


def read_model_folder(path: str | Path | None = None) -> tuple[Path, dict]:
    """(folder, pedit.json) of an MCDM model folder (default: the bundled toon model), checked before any loading."""
    path = model_path(path)
    if not path.exists():
        raise ModelError(f"Model folder {path} does not exist. Pass a folder written by `pedit train` with -m.")
    if not path.is_dir():
        raise ModelError(f"Model {path} is a file; -m takes a folder written by `pedit train`.")
    missing = [name for name in MODEL_REQUIRED if not (path / name).exists()]
    if missing:
        raise ModelError(
            f"Model folder {path} is missing {', '.join(missing)}; a model folder holds {', '.join(MODEL_REQUIRED)} "
            "(what `pedit train` writes)."
        )
    check_links(path, "Model folder")
    try:
        meta = json.loads((path / "pedit.json").read_text())
        int(meta["resolution"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path / 'pedit.json'} is not a valid pedit model description ({e}).") from None
    resolution = meta["resolution"]
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 8 <= resolution <= MAX_RESOLUTION:
        raise ModelError(f"{path / 'pedit.json'}: resolution must be an integer from 8 to {MAX_RESOLUTION}, "
                         f"got {resolution!r}.")
    try:
        check_section(str(path / "pedit.json"), "", meta, TOP_LEVEL, required=("resolution",))
    except ValueError as e:
        raise ModelError(str(e)) from None
    directions = model_directions(meta, path)
    sched_file = path / "scheduler" / "scheduler_config.json"
    if (why := regular_file_problem(sched_file)) is not None:
        raise ModelError(f"Scheduler config {sched_file} {why}.")
    check_scheduler_config(_read_json(sched_file, "Scheduler config"), sched_file)
    try:
        check_mask_settings(meta, path / "pedit.json", list(directions))  # "mask", "mask_by_task", "mask_by_direction"
        check_sampling_settings(meta, path / "pedit.json")  # "sampling", "sampling_by_task"
        check_distilled_settings(meta, path / "pedit.json")  # "distilled"
    except ValueError as e:
        raise ModelError(str(e)) from None
    check_refiners(meta, path)  # a learned mask refiner's file: present, of this kind and resolution
    return path, meta


def load_model(path: str | Path | None = None, allow_pickle: bool = False, device="cpu", dtype=torch.float32) -> LoadedModel:
    """Load an MCDM model folder (default: the bundled toon model)."""
    from diffusers import UNet2DConditionModel

    from pedit.model.mcdm import MCDM, ImageProjector

    path, meta = read_model_folder(path)
    resolution = meta["resolution"]
    parts = load_frozen_parts(path, allow_pickle)
    if resolution % parts.latent_factor:
        raise ModelError(f"{path / 'pedit.json'}: resolution {resolution} is not a multiple of the VAE's latent "
                         f"factor {parts.latent_factor}.")
    unet = _load(UNet2DConditionModel, path / "unet", allow_pickle, "U-Net")
    projector = _load(ImageProjector, path / "image_projector", allow_pickle, "Image projector")
    mcdm = MCDM(unet, projector).eval().requires_grad_(False)
    check_shapes(mcdm, parts, path)
    if mcdm.distilled != ("distilled" in meta):  # the rows an edit builds follow pedit.json; the U-Net must agree
        raise ModelError(f"{path}: pedit.json {'says' if 'distilled' in meta else 'does not say'} the model is "
                         f"distilled, but its U-Net {'has' if mcdm.distilled else 'has no'} scale embedding; the "
                         "folder was altered after `pedit distill` or `pedit train` wrote it.")
    mcdm.to(device=device, dtype=dtype)
    parts.to(device, dtype)
    return LoadedModel(mcdm, parts, meta, path)
