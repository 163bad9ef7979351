"""The latent cache of `pedit train`: what the frozen parts compute, computed once per pair folder.

The frozen VAE, CLIP vision and text encoders give the same answer for a pair at every epoch, so
the training loop need not ask them again (issue: training ran at ~4.5 steps/s on an H200 for a
3.2M-parameter U-Net, per-step overhead rather than the GPU). For each pair the cache holds

- `mean_A`, `std_A`, `mean_B`, `std_B`: the VAE posterior of x_A and x_B, unscaled, (N, 4, h, w);
  the loop draws the target latent z_0 = mean + std * noise from it each step, exactly as the
  uncached loop does, so training is identical in distribution (and, in fp32, step for step);
- `clip_A`: CLIP_im(x_A), the last hidden state the image projector consumes, (N, 1 + P, Dv);
- the prompt embeddings c_p of every prompt of the folder and the empty one, (n_prompts, 77, D).

Tensors are stored in the dtype the encoders ran in (fp32, or the mixed-precision dtype, whose
values the uncached loop also rounds to), in safetensors shards of `SHARD_PAIRS` pairs, under a
folder named by a key that hashes everything that changes the answers: metadata.jsonl and every
image's bytes, the frozen weights and configs, the resolution, the dtype. A shard written by an
interrupted build is reused when its key matches; `manifest.json` is written last, so a folder
without it is never read as complete. The manifest records the content hash of the shards and the
prompt table (pedit.cache.seal), and every load checks the folder is still those files, regular
files with no link among them (pedit.cache.entry_problem; a file's hash is remembered with its stat,
so an unchanged cache costs a stat per file): a shard swapped in from another cache is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pedit.cache import entry_problem, seal, stat_key
from pedit.data.pairs import METADATA, Pair, load_rgb
from pedit.errors import OutputError, PairFolderError

FORMAT = 2  # 2: the manifest records the content hash of the shards and the prompt table
SHARD_PAIRS = 4096
ENCODE_BATCH = 64
PAIR_TENSORS = ("mean_A", "std_A", "mean_B", "std_B", "clip_A")


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


_READ: dict[str, list] = {}  # image path → its stat when data_hash read it (this process): read_unchanged


def data_hash(folder: Path, pairs: list[Pair]) -> str:
    """sha256 over metadata.jsonl and the bytes of every x_A and x_B, in pair order. Each image's stat is
    remembered as it is read, so later reads of the run can tell it has not changed since (read_unchanged)."""
    h = hashlib.sha256()
    _hash_file(h, Path(folder) / METADATA)
    for p in pairs:
        for f in (p.x_A, p.x_B):
            h.update(os.fsencode(str(f.relative_to(Path(folder).resolve()) if f.is_absolute() else f)))  # names need not be UTF-8
            _READ[str(f)] = stat_key(os.stat(f))  # before the bytes: a write during the hash moves it
            _hash_file(h, f)
    return h.hexdigest()


def read_unchanged(path: Path, size: int):
    """load_rgb(path, size), refusing an image that changed since the run's data_hash read it (issue 27):
    a run that reads images as it goes (--no-cache, or the cache build) must not train on a mix of the
    folder as it was and as it is. A stat per read: any write moves the file's ctime (pedit.cache.stat_key)."""
    seen = _READ.get(str(path))
    if seen is not None and stat_key(os.stat(path)) != seen:
        raise PairFolderError(f"{path} changed while the run was using its pair folder (after the run read it at "
                              "its start); a run trains on the pairs as they were then or not at all. Leave the "
                              "folder unchanged during a run, and start again.")
    return load_rgb(path, size)


def parts_hash(parts, size: int, dtype: torch.dtype) -> str:
    """sha256 over the frozen weights (as they are in memory), their configs, CLIP's normalisation,
    the tokenizer's vocabulary, the resolution and the dtype the encoders run in."""
    h = hashlib.sha256()
    for module in (parts.vae, parts.image_encoder, parts.text_encoder):
        h.update(json.dumps(module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config),
                            sort_keys=True, default=str).encode())
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(json.dumps(parts.tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps([list(parts.image_mean), list(parts.image_std), size, str(dtype)]).encode())
    return h.hexdigest()


@dataclass
class LatentCache:
    """Every pair's cached tensors, stacked along the pair axis, plus the prompt table."""

    mean_A: torch.Tensor  # (N, 4, h, w) VAE posterior mean of x_A (unscaled)
    std_A: torch.Tensor  # (N, 4, h, w)
    mean_B: torch.Tensor  # (N, 4, h, w)
    std_B: torch.Tensor  # (N, 4, h, w)
    clip_A: torch.Tensor  # (N, 1 + P, Dv)
    prompts: torch.Tensor  # (n_prompts, 77, D); row 0 is the empty prompt
    p_a: torch.Tensor  # (N,) long: row of each pair's p_a in `prompts`
    p_b: torch.Tensor  # (N,) long
    folder: Path

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in (*PAIR_TENSORS, "prompts", "p_a", "p_b")}

    def to(self, device) -> "LatentCache":
        for name, t in self.tensors().items():
            setattr(self, name, t.to(device))
        return self


def prompt_texts(pairs: list[Pair]) -> list[str]:
    """The prompts of a pair folder, the empty one (the null c_p) first."""
    return [""] + sorted(({p.p_a for p in pairs} | {p.p_b for p in pairs}) - {""})


def prompt_rows(pairs: list[Pair], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) rows of each pair's p_a and p_b in `texts`."""
    row = {text: i for i, text in enumerate(texts)}
    return (torch.tensor([row[p.p_a] for p in pairs], dtype=torch.long),
            torch.tensor([row[p.p_b] for p in pairs], dtype=torch.long))


@torch.no_grad()
def encode_texts(parts, texts: list[str]) -> torch.Tensor:
    """c_p of every text, (n, 77, D), in chunks of 256."""
    return torch.cat([parts.encode_prompts(texts[i:i + 256]) for i in range(0, len(texts), 256)])


@torch.no_grad()
def encode_pairs(parts, x_A: torch.Tensor, x_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """The cached tensors of a batch. x_A, x_B: (B, 3, R, R) float32 in [-1, 1] on the parts' device.

    One VAE call for both images; the posterior's mean and std come back in the encoders' dtype,
    unscaled. CLIP resizes the float32 image before casting (FrozenParts.clip_tokens).
    """
    posterior = parts.vae.encode(torch.cat([x_A, x_B]).to(parts.dtype)).latent_dist
    mean_A, mean_B = posterior.mean.chunk(2)  # (B, 4, h, w) each
    std_A, std_B = posterior.std.chunk(2)
    return {"mean_A": mean_A, "std_A": std_A, "mean_B": mean_B, "std_B": std_B, "clip_A": parts.clip_tokens(x_A)}


def check_writable(root: Path) -> None:
    """Create the cache root now, so an unwritable one fails before any training output appears."""
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        probe = Path(root) / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputError(f"Cannot write the latent cache to {root} ({e.strerror or type(e).__name__}); pass "
                          "--cache-dir with a writable folder, or --no-cache.") from None


def cache_folder(root: Path, key: str) -> Path:
    return Path(root) / key[:16]


def _shard_path(folder: Path, i: int) -> Path:
    return folder / f"pairs-{i:05d}.safetensors"


def _shard_key(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # a truncated or foreign file: rebuilt
        return None


def build_or_load(root: Path, pairs: list[Pair], data_folder: Path, parts, size: int,
                  progress: Callable[[int, int], None] | None = None, workers: int = 0,
                  build: bool = True) -> LatentCache:
    """The cache of (pair folder, frozen parts, size, dtype) under `root`: loaded, or built first.

    `parts` must already be on the device and in the dtype the training encodes with. With
    build=False (ranks other than the first) a missing cache is an error, never a second build.
    """
    key = hashlib.sha256((data_hash(data_folder, pairs) + parts_hash(parts, size, parts.dtype)).encode()).hexdigest()
    folder = cache_folder(root, key)
    manifest = folder / "manifest.json"
    if not manifest.exists():
        if not build:
            raise OutputError(f"Latent cache {folder} is missing after the main process built it.")
        _build(folder, key, pairs, parts, size, progress, workers)
    return _load(folder, key, pairs)


def _build(folder: Path, key: str, pairs: list[Pair], parts, size: int, progress, workers: int) -> None:
    from safetensors.torch import save_file

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot write the latent cache to {folder} ({e.strerror}); pass --cache-dir "
                          "with a writable folder, or --no-cache.") from None
    loader_of = _image_loader(pairs, size, workers)
    n_shards = (len(pairs) + SHARD_PAIRS - 1) // SHARD_PAIRS
    for s in range(n_shards):
        path = _shard_path(folder, s)
        lo, hi = s * SHARD_PAIRS, min(len(pairs), (s + 1) * SHARD_PAIRS)
        if path.exists() and _shard_key(path) == key:  # from an interrupted build of the same cache
            if progress:
                progress(hi, len(pairs))
            continue
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in PAIR_TENSORS}
        for start, (x_A, x_B) in loader_of(lo, hi):
            x_A = x_A.to(parts.device).float() / 127.5 - 1  # (b, 3, R, R) in [-1, 1]
            x_B = x_B.to(parts.device).float() / 127.5 - 1
            for name, t in encode_pairs(parts, x_A, x_B).items():
                chunks[name].append(t.to("cpu", parts.dtype))
            if progress:
                progress(start + len(x_A), len(pairs))
        tensors = {name: torch.cat(ts).contiguous() for name, ts in chunks.items()}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"key": key, "first": str(lo), "count": str(hi - lo)})
        os.replace(tmp, path)
    prompts = prompt_texts(pairs)
    embeddings = encode_texts(parts, prompts)
    tmp = folder / "prompts.tmp"
    save_file({"prompts": embeddings.to("cpu", parts.dtype).contiguous()}, str(tmp),
              metadata={"key": key, "texts": json.dumps(prompts)})
    os.replace(tmp, folder / "prompts.safetensors")
    files = [_shard_path(folder, s).name for s in range(n_shards)] + ["prompts.safetensors"]
    manifest = {"format": FORMAT, "key": key, "pairs": len(pairs), "shards": n_shards, "dtype": str(parts.dtype),
                "resolution": size, "tensors": list(PAIR_TENSORS), "files": files, "content": seal(folder, files)}
    tmp = folder / "manifest.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / "manifest.json")


def _image_loader(pairs: list[Pair], size: int, workers: int):
    """loader(lo, hi) yields (start, (x_A, x_B) uint8 (b, 3, R, R)) over pairs lo..hi-1, decoded in workers."""

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(pairs)

        def __getitem__(self, i):
            p = pairs[i]
            return tuple(torch.from_numpy(read_unchanged(f, size)).permute(2, 0, 1) for f in (p.x_A, p.x_B))

    def loader(lo: int, hi: int):
        batches = [list(range(b, min(hi, b + ENCODE_BATCH))) for b in range(lo, hi, ENCODE_BATCH)]
        dl = torch.utils.data.DataLoader(Images(), batch_sampler=batches, num_workers=workers)
        yield from zip((b[0] for b in batches), dl)

    return loader


def _load(folder: Path, key: str, pairs: list[Pair]) -> LatentCache:
    """The cache in `folder`, checked as untrusted input: pedit wrote it, but anyone may have edited,
    truncated or swapped its files since, and a wrong tensor would train silently."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        manifest = json.loads(_cache_file(folder, "manifest.json").read_text())
        if manifest.get("key") != key or manifest.get("pairs") != len(pairs):
            raise OutputError(f"Latent cache {folder} belongs to other data; delete the folder to rebuild it.")
        if manifest.get("format") != FORMAT:
            raise _damaged(folder, f"an older pedit wrote it (format {manifest.get('format')!r}, now {FORMAT})")
        shards = [load_file(str(_cache_file(folder, _shard_path(folder, s).name))) for s in range(int(manifest["shards"]))]
        pair = {name: torch.cat([s[name] for s in shards]) for name in PAIR_TENSORS}
        with safe_open(str(_cache_file(folder, "prompts.safetensors")), "pt") as f:
            texts = json.loads(f.metadata()["texts"])
            prompts = f.get_tensor("prompts")
    except OutputError:
        raise
    except Exception as e:  # a truncated shard, a missing tensor, a manifest edited by hand
        raise _damaged(folder, f"{type(e).__name__}: {e}") from None
    _check_tensors(folder, manifest, pair, prompts, len(pairs), texts, prompt_texts(pairs))
    # Last, so a damaged tensor is named; this catches well-formed files of another cache swapped in.
    if (why := entry_problem(folder, manifest.get("files"), manifest.get("content"))) is not None:
        raise _damaged(folder, why)
    p_a, p_b = prompt_rows(pairs, texts)
    return LatentCache(**pair, prompts=prompts, p_a=p_a, p_b=p_b, folder=folder)


def _damaged(folder: Path, why: str) -> OutputError:
    return OutputError(f"Latent cache {folder} is damaged ({why}); delete the folder to rebuild it, or train "
                       "with --no-cache.")


def _cache_file(folder: Path, name: str) -> Path:
    """`folder/name` if it is a regular file, not a link (which could lead out of the cache)."""
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise _damaged(folder, f"{name} is {'a link' if path.is_symlink() else 'not a regular file'}")
    return path


def _check_tensors(folder: Path, manifest: dict, pair: dict, prompts: torch.Tensor, n: int, texts, want_texts) -> None:
    """Shapes, dtypes and values as _build writes them: mean/std (N, 4, h, w) alike, clip_A (N, T, Dv),
    prompts (len(texts), 77, D), all in the manifest's dtype and finite."""
    dtype = manifest.get("dtype")
    latent = pair["mean_A"].shape
    for name, t in {**pair, "prompts": prompts}.items():
        if str(t.dtype) != dtype:
            raise _damaged(folder, f"{name} is {t.dtype}, the manifest says {dtype}")
        if name != "prompts" and t.shape[0] != n:
            raise _damaged(folder, f"{name} holds {t.shape[0]} pairs, the folder {n}")
        if name in ("mean_A", "std_A", "mean_B", "std_B") and (t.shape != latent or t.dim() != 4):
            raise _damaged(folder, f"{name} has shape {tuple(t.shape)}, mean_A {tuple(latent)}")
        if not torch.isfinite(t).all():
            raise _damaged(folder, f"{name} holds NaN or infinite values")
    if texts != want_texts or prompts.dim() != 3 or prompts.shape[0] != len(texts):
        raise _damaged(folder, "its prompt table does not match the pair folder's prompts")
