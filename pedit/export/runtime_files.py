"""What `pedit export` writes beside the graphs so the torch-free runtime (pedit.export.runtime) can edit.

Computed here, at export time, by the same torch code the torch path runs, so the runtime reads
numbers instead of recomputing them:

    tokenizer.json   the model's CLIP tokenizer in the `tokenizers` format, padding and truncation
                     to 77 tokens set (what pedit.model.mcdm.encode_prompts asks of CLIPTokenizer)
    runtime.npz      alphas_cumprod (T,) float32: the noise schedule's table, taken from the scheduler
                     object the torch path samples with (pedit.edit.sampler.make_scheduler);
                     clip_resize (S, R) float32: the CLIP image encoder's antialiased bicubic resize
                     R → S as the matrix A with resize(x) = A x Aᵀ (read off torch's own
                     F.interpolate on unit vectors, so it is torch's kernel, not a reimplementation);
                     clip_mean, clip_std (3,): the CLIP normalisation
    model.json       the model folder's pedit.json (directions, mask and sampling settings, a
                     student's scale range), its scheduler config and the sizes (Dims) of the graphs

Their records (file, sha256, stat) go into the manifest's "runtime" entry, checked by the runtime
like the graphs' (pedit.export.graph_files.problem).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from pedit.export import graph_files
from pedit.files import write_atomic

TOKENIZER, ARRAYS, MODEL_JSON = "tokenizer.json", "runtime.npz", "model.json"
RUNTIME_FORMAT = 1
# The model folder's parts an export's runtime is made of: its graphs' weights and what model.json copies.
# Their hash ("source_hash") says whether a cached export still is the model's (pedit.export.runtime_folder).
RUNTIME_SOURCES = ("pedit.json", "scheduler", "unet", "image_projector", "image_encoder", "text_encoder",
                   "tokenizer", "vae")


def clip_resize_matrix(resolution: int, size: int):
    """(size, resolution) float32 A with F.interpolate(x, (size, size), bicubic, antialias) = A x Aᵀ.

    The antialiased bicubic resize is separable: each output row is a fixed weighting of input rows.
    Resizing unit vectors (one per batch row, 4 columns wide: a width of 1 takes another code path
    in torch) reads the weights off torch's kernel itself."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(resolution).view(resolution, 1, resolution, 1).expand(resolution, 1, resolution, 4).contiguous()
    out = F.interpolate(eye, size=(size, 4), mode="bicubic", antialias=True, align_corners=False)
    return out[:, 0, :, 0].T.contiguous().numpy()  # (S, R)


def _tokenizer_json(tokenizer) -> bytes:
    """The CLIP tokenizer as `tokenizers` JSON, padded and truncated to 77 like encode_prompts."""
    from pedit.export.specs import PROMPT_LENGTH

    backend = tokenizer.backend_tokenizer  # transformers 5's CLIPTokenizer is backed by `tokenizers`
    copy = type(backend).from_str(backend.to_str())
    copy.enable_padding(length=PROMPT_LENGTH, pad_id=int(tokenizer.pad_token_id), pad_token=str(tokenizer.pad_token))
    copy.enable_truncation(PROMPT_LENGTH)
    return copy.to_str(pretty=True).encode()


def _arrays(model) -> bytes:
    import numpy as np

    from pedit.edit.sampler import make_scheduler

    parts = model.parts
    scheduler = make_scheduler("ddim", parts.scheduler_config)  # the table the torch path samples with
    size = int(parts.image_encoder.config.image_size)
    buf = io.BytesIO()
    np.savez(buf, alphas_cumprod=scheduler.alphas_cumprod.float().numpy(),
             clip_resize=clip_resize_matrix(model.resolution, size),
             clip_mean=np.asarray(parts.image_mean, dtype=np.float32),
             clip_std=np.asarray(parts.image_std, dtype=np.float32))
    return buf.getvalue()


def _model_json(model, dims) -> bytes:
    import dataclasses

    return json.dumps({"format": RUNTIME_FORMAT, "meta": model.meta, "scheduler_config": model.parts.scheduler_config,
                       "dims": dataclasses.asdict(dims), "latent_factor": model.parts.latent_factor},
                      indent=2, sort_keys=True).encode()


def write_runtime_files(out: Path, model, dims, entry: dict | None, known: dict, log) -> dict:
    """Write (or keep, when their bytes are what the manifest recorded) the runtime's files; their entry.
    `known`: the manifest's file hashes (pedit.cache.folder_hash), updated in place."""
    import hashlib

    from pedit.cache import file_sha256, folder_hash

    from pedit.model.mask_refiner import refiner_files

    contents = {TOKENIZER: _tokenizer_json(model.parts.tokenizer), ARRAYS: _arrays(model),
                MODEL_JSON: _model_json(model, dims)}
    contents.update({name: (Path(model.path) / name).read_bytes() for name in refiner_files(model.meta)})
    old = (entry or {}).get("files", {})
    files, written = {}, []
    for name, data in contents.items():
        rec = old.get(name)
        if not (rec and rec.get("sha256") == hashlib.sha256(data).hexdigest()
                and graph_files.problem(out, rec) is None):
            write_atomic(out / name, lambda f, data=data: f.write(data), overwrite=True)
            rec = {"file": name, "sha256": file_sha256(out / name)}
            written.append(name)
        files[name] = graph_files.record(out / name, data=False) if name in written else rec
    log(f"runtime files: {'wrote ' + ', '.join(written) if written else 'skipped (unchanged)'}")
    return {"format": RUNTIME_FORMAT, "files": files,
            "source_hash": folder_hash(Path(model.path), runtime_sources(Path(model.path)), known)}


def runtime_sources(model_folder: Path) -> tuple[str, ...]:
    """What a runtime export is made from: RUNTIME_SOURCES and the learned mask refiner files pedit.json names."""
    from pedit.model.mask_refiner import refiner_files

    try:
        meta = json.loads((Path(model_folder) / "pedit.json").read_text())
    except (OSError, ValueError):
        return RUNTIME_SOURCES
    return RUNTIME_SOURCES + tuple(refiner_files(meta) if isinstance(meta, dict) else ())
