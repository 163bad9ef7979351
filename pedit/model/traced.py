"""A TorchScript copy of a model folder, so that a new process edits without importing diffusers or transformers.

Why: on the CPU, `pedit edit` spent ~5 s importing diffusers and transformers (diffusers pulls
torch._dynamo, peft and transformers) for a sub-second edit of the toon model. TorchScript files
load with torch alone (docs/deployment.md, "CPU cold start").

What is cached, per model folder, under `cache_dir()/<key>/` (pedit.cache; CPU, float32 only):
    model.pt              one TorchScript module (weights stored once), one method per editor call:
                          forward = mcdm(z_in, t, context) -> eps, any batch (traced at 5 rows, checked
                          at more), integer t only (fractional t, Euler's, runs the model itself);
                          image_projector(c_s, clip_tokens); encode_latent(x); clip_tokens(x) with
                          its preprocessing; decode(z)
    prompts.pt            c_p of every prompt the model's directions use, and of ""
    scheduler_config.json the model's noise schedule
    meta.json             the key, what it was made from, and the content hash of the three files above
                          (written last: marks a complete cache). Every load checks the entry is still
                          those files (pedit.cache.entry_problem: regular files, no links, the hash,
                          remembered with each file's stat so an unchanged entry is not re-read); an
                          entry replaced, altered or linked since is rebuilt from the model
The traces record the very modules and methods the eager path calls, so they run the same kernels:
a cache is written only when every trace reproduces its eager module bit for bit on test inputs,
and tests/test_coldstart.py pins that an edit gives the same bytes either way.

The key hashes the content of every file the model loads from (pedit.json and the component folders;
each file's hash is reused while its stat is unchanged, see `model_key`), the torch, diffusers, transformers and pedit versions and this format's version: a changed weight, prompt or library gives
a new key, never a stale cache. Safety checks that do not depend on content (pickle-only weights
need allow_pickle) run on every load, as for the eager path. A prompt outside the cache (a custom
`Direction` in the Python API) is encoded by the real text encoder, loaded on first use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pedit import __version__
from pedit.cache import cache_root, content_hash, entry_problem, links_problem, seal
from pedit.errors import PeditError
from pedit.noise import rand, randn

CACHE_FORMAT = 4  # 2: the 1- and 2-row calls outside a guidance interval checked; 3: one timestep per row;
# 4: meta.json records the content hash of the entry's files, checked at every load
ENTRY_FILES = ("model.pt", "prompts.pt", "scheduler_config.json")
COMPONENTS = ("unet", "image_projector", "vae", "text_encoder", "tokenizer", "image_encoder", "scheduler")
CHECK_BATCHES = (1, 2, 5, 15, 50, 65)  # denoise rows checked against eager: a plain step's 1-2, the sampler's 5,
# and mask calls
# (diffusers' Upsample2D branches on 64 rows; the branch only makes a copy contiguous, checked anyway)


MAX_TRACED_BYTES = 1 << 30  # weights over 1 GiB (a Stable Diffusion-size folder) are not traced: see worth_tracing


class CacheError(PeditError):
    """The model could not be traced faithfully; editing goes on without the cache."""


def cache_dir() -> Path:
    """The `traced` folder of pedit's cache root (pedit.cache: $PEDIT_CACHE, default ~/.cache/pedit)."""
    return cache_root("traced")


def weights_bytes(path: Path) -> int:
    """Bytes of every file under the model folder's component folders (stat only, nothing read)."""
    total = 0
    for part in COMPONENTS:
        base = Path(path) / part
        if base.is_dir():
            total += sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    return total


def worth_tracing(path: Path) -> str | None:
    """None when a TorchScript cache pays for the model folder at `path`, else why not.

    The cache saves the seconds of importing diffusers and transformers, which dominate a small model's
    edit. A Stable Diffusion-size folder (about 4 GB of weights) takes over 10 minutes on 2 CPU cores to
    trace and check against eager, writes as many gigabytes again, and its edit is minutes of compute
    either way: such a model edits from its own folder.
    """
    size = weights_bytes(path)
    if size > MAX_TRACED_BYTES:
        return (f"no TorchScript cache: the model's weights are {size / 2**30:.1f} GiB (the cache is for models "
                f"under {MAX_TRACED_BYTES / 2**30:.0f} GiB, whose start-up it shortens); editing from the folder")
    return None


def _versions() -> str:
    """Versions of the libraries whose code is in a trace (diffusers' U-Net and VAE, transformers' CLIP)
    or made the cached prompt embeddings. Read from package metadata: importing them costs seconds."""
    import importlib.metadata as md

    out = [f"torch {torch.__version__}", f"pedit {__version__}"]
    for pkg in ("diffusers", "transformers"):
        try:
            out.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(f"{pkg} none")
    return " ".join(out)


def model_key(path: Path) -> str:
    """Hash of everything the model loads from, plus the versions that shape a trace.

    File hashes are remembered with their stat (pedit.cache.content_hash), so a new process reads
    only the files that changed since, not every weight again.
    """
    content = content_hash(Path(path), ("pedit.json", *COMPONENTS))
    return hashlib.sha256(f"pedit-traced {CACHE_FORMAT} {_versions()}\n{content}".encode()).hexdigest()[:32]


@contextmanager
def _quiet_jit():
    # torch.jit is deprecated in favour of torch.export, whose loader imports torch._dynamo (seconds):
    # for a cold start TorchScript is still the right tool while torch ships it (see the module docstring).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class _Editable(nn.Module):
    """The model's networks in one module, one method per call the editor makes, so weights are stored once.

    Each method calls the very code the eager editor calls (MCDM.forward, ImageProjector, FrozenParts).
    """

    def __init__(self, mcdm, parts):
        super().__init__()
        self.mcdm, self.vae, self.image_encoder = mcdm, parts.vae, parts.image_encoder
        self._parts = parts

    def forward(self, z_in, t, context):  # denoise: eps (N, 4, h, w)
        return self.mcdm(z_in, t, context)

    def image_projector(self, c_s, clip_tokens):  # c_im (B, K, D)
        return self.mcdm.image_projector(c_s, clip_tokens)

    def encode_latent(self, x):  # c_s (B, 4, h, w)
        return self._parts.encode_latent(x)

    def clip_tokens(self, x):  # (B, 1 + P, Dv), preprocessing included
        return self._parts.clip_tokens(x)

    def decode(self, z):  # (B, 3, R, R) in [-1, 1]
        return self._parts.decode(z)


def _prompts_of(meta: dict, path: Path) -> list[str]:
    from pedit.data.directions import model_directions

    prompts = {""}
    for d in model_directions(meta, path).values():
        prompts.update((d.p_a, d.p_b))
    return sorted(prompts)


def _check(name: str, traced, eager, *inputs) -> None:
    with torch.no_grad(), torch.jit.optimized_execution(False):  # as the trace will run (`_plain`)
        same = torch.equal(traced(*inputs), eager(*inputs))
    if not same:
        raise CacheError(f"the TorchScript trace of {name} does not reproduce the model exactly")


@torch.no_grad()
def build_cache(model, key: str, root: Path | None = None) -> Path:
    """Trace a loaded CPU float32 model (pedit.model.loading.LoadedModel) into `root/key`; return that folder.

    Written to a temporary folder and renamed into place, so a half-written cache is never read.
    """
    mcdm, parts, res = model.mcdm, model.parts, model.resolution
    if parts.device.type != "cpu" or mcdm.dtype != torch.float32:
        raise CacheError("only a CPU float32 model is cached")
    gen = torch.Generator().manual_seed(0)
    lat = res // parts.latent_factor
    d_text = parts.text_encoder.config.hidden_size
    n_ctx = mcdm.context_length  # 77 + K (+ 1: a distilled student's scale token)
    x = rand((1, 3, res, res), gen) * 2 - 1  # (1, 3, R, R) in [-1, 1]
    c_s = randn((1, 4, lat, lat), gen)
    clip = randn((1, parts.num_image_tokens, parts.image_encoder.config.hidden_size), gen)

    eager = _Editable(mcdm, parts).eval()
    example = {
        "forward": (randn((5, 8, lat, lat), gen), torch.full((5,), 981), randn((5, n_ctx, d_text), gen)),
        "image_projector": (c_s, clip),
        "encode_latent": (x,),
        "clip_tokens": (x,),
        "decode": (c_s,),
    }
    try:
        with _quiet_jit():
            traced = torch.jit.trace_module(eager, example, check_trace=False)
            for name, inputs in example.items():
                _check(name, getattr(traced, name), getattr(eager, name), *inputs)
            for rows in CHECK_BATCHES:  # the trace must not have frozen the batch size
                for t in (torch.full((rows,), 1), torch.arange(rows) * 97 % 1000):  # rows at one step, or several
                    inputs = (randn((rows, 8, lat, lat), gen), t, randn((rows, n_ctx, d_text), gen))
                    _check(f"denoise at {rows} rows", traced, eager, *inputs)
    except CacheError:
        raise
    except Exception as e:  # tracing runs third-party forward code: any failure means "no cache", not "no edit"
        raise CacheError(f"could not trace the model ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None

    prompts = _prompts_of(model.meta, model.path)
    embeddings = torch.cat([parts.encode_prompts([p]) for p in prompts])  # (P, 77, D), one at a time as Editor does

    root = root or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    tmp = root / f".{key}-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        # Serialised in memory, then written by Python: torch's own file writer aborts the whole process
        # (C++ terminate) when the disk fills mid-write, where a Python write raises an OSError that
        # leaves the edit going on without the cache (issue 27).
        model_bytes, prompt_bytes = io.BytesIO(), io.BytesIO()
        with _quiet_jit():
            torch.jit.save(traced, model_bytes)
        torch.save({"prompts": prompts, "embeddings": embeddings.contiguous()}, prompt_bytes)
        (tmp / "model.pt").write_bytes(model_bytes.getbuffer())
        (tmp / "prompts.pt").write_bytes(prompt_bytes.getbuffer())
        (tmp / "scheduler_config.json").write_text(json.dumps(parts.scheduler_config, indent=2))
        info = {"format": CACHE_FORMAT, "key": key, "model": str(model.path), "torch": torch.__version__,
                "pedit": __version__, "resolution": res, "methods": list(example),
                "files": list(ENTRY_FILES), "content": seal(tmp, list(ENTRY_FILES))}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2))  # written last: marks a complete cache
        if os.path.lexists(final):  # unreadable or altered (load_cached said so), or another process just wrote it
            stale = root / f".{key}-stale-{os.getpid()}"
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _plain(method):
    """Run a TorchScript method without the profiling executor.

    By default TorchScript profiles the first calls and then optimises the graph (the first toon
    edit took twice as long as the next); a one-edit process only pays for that, and the CPU has
    no fuser to gain from it. Same graph, same kernels, same results.
    """

    def call(*args):
        with torch.jit.optimized_execution(False):
            return method(*args)

    return call


class TracedMCDM:
    """Stands in for MCDM where the editor uses it: called as denoise, `image_projector`, `dtype`.

    The trace holds the U-Net's path for integer timesteps (DDIM, DPM-Solver++); a scheduler with
    fractional timesteps (Euler) takes another path inside diffusers, so those calls go to the
    model itself, loaded on first use.
    """

    dtype = torch.float32

    def __init__(self, denoise, image_projector, load_eager):
        self._denoise = denoise
        self.image_projector = image_projector
        self._load_eager, self._eager = load_eager, None

    def __call__(self, z_in, t, context):
        if torch.is_floating_point(t):
            if self._eager is None:
                self._eager = self._load_eager()
            return self._eager(z_in, t, context)
        return self._denoise(z_in, t, context)


class TracedParts:
    """Stands in for FrozenParts where the editor uses it (CPU, float32)."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, module, prompts: dict, scheduler_config: dict, model_path: Path, allow_pickle: bool):
        self.encode_latent = _plain(module.encode_latent)
        self.clip_tokens = _plain(module.clip_tokens)
        self.decode = _plain(module.decode)
        self.scheduler_config = scheduler_config
        self._prompts = prompts  # {prompt: (1, 77, D)}
        self._model_path, self._allow_pickle = model_path, allow_pickle
        self._text = None  # (tokenizer, text encoder), loaded for the first prompt outside the cache

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """c_p for each prompt: (B, 77, D), from the cache or the model's own text encoder."""
        missing = [p for p in prompts if p not in self._prompts]
        if missing:
            from pedit.model.loading import load_text_encoder
            from pedit.model.mcdm import encode_prompts

            if self._text is None:
                self._text = load_text_encoder(self._model_path, self._allow_pickle)
            for p in missing:
                self._prompts[p] = encode_prompts(*self._text, [p], self.device)
        return torch.cat([self._prompts[p] for p in prompts])


@dataclass
class TracedModel:
    """What Editor needs of a model (the shape of pedit.model.loading.LoadedModel), from the cache."""

    mcdm: TracedMCDM
    parts: TracedParts
    meta: dict
    path: Path

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])


def load_cached(path: Path, meta: dict, key: str, allow_pickle: bool = False, root: Path | None = None) -> TracedModel | None:
    """The cached model for `key`, or None when there is none (or it is unreadable: rebuilt then)."""
    folder = (root or cache_dir()) / key
    try:
        if links_problem(folder) is not None:
            return None
        info = json.loads((folder / "meta.json").read_text())
        if info.get("format") != CACHE_FORMAT or info.get("key") != key:
            return None
        if entry_problem(folder, info.get("files"), info.get("content")) is not None:
            return None  # replaced, altered or linked since it was written: rebuilt from the model
        with _quiet_jit():
            module = torch.jit.load(str(folder / "model.pt"), map_location="cpu").eval()
        stored = torch.load(folder / "prompts.pt", weights_only=True)
        prompts = {p: stored["embeddings"][i:i + 1] for i, p in enumerate(stored["prompts"])}
        scheduler_config = json.loads((folder / "scheduler_config.json").read_text())
    except Exception:  # noqa: BLE001 - whatever makes our own cache unreadable (truncated, foreign): rebuild it
        return None
    parts = TracedParts(module, prompts, scheduler_config, path, allow_pickle)

    def load_eager():
        from pedit.model.loading import load_model

        return load_model(path, allow_pickle=allow_pickle).mcdm

    return TracedModel(TracedMCDM(_plain(module), _plain(module.image_projector), load_eager), parts, meta, path)
