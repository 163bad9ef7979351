"""Making the bundled toon model: a toon base with a trained VAE, and the packaging step.

    python -m pedit.toon.recipe base --out runs/toon/base --vae-steps 3000 --device cuda
    python -m pedit.toon.recipe bundle --model runs/toon/model --base runs/toon/base --dest pedit/assets

`scripts/make_toon_model.sh` runs the whole recipe (base → pairs → `pedit train --init scratch` →
bundle); the MCDM itself is trained by the same `pedit train` code path as a Stable Diffusion one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pedit.toon import world as toon


def _render_chunk(args) -> np.ndarray:
    seed, start, count, size = args
    rng = np.random.default_rng([seed, start])
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        expression = toon.EXPRESSIONS[rng.integers(len(toon.EXPRESSIONS))]
        costume = toon.COSTUMES[rng.integers(len(toon.COSTUMES))]
        out[i] = toon.render(int(rng.integers(2**31)), expression, costume, size)
    return out


def render_pool(n: int, size: int, seed: int = 0, workers: int = 1) -> np.ndarray:
    """(n, size, size, 3) uint8 toon portraits of random identities, expressions and costumes."""
    chunk = 256
    jobs = [(seed, start, min(chunk, n - start), size) for start in range(0, n, chunk)]
    if workers <= 1:
        return np.concatenate([_render_chunk(j) for j in jobs])
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(_render_chunk, jobs)))


def build_toon_base(out: Path, spec_name: str = "toon", vae_steps: int = 3000, batch_size: int = 64,
                    pool_size: int = 8192, device: str = "cpu", seed: int = 0, workers: int = 1,
                    log=print) -> Path:
    """A base folder (pedit.toon.parts.build_base) whose VAE has been trained on toon renders."""
    import torch
    from diffusers import AutoencoderKL

    from pedit.noise import randint
    from pedit.toon.parts import TINY, TOON, TOON32, build_base, train_vae

    spec = {"toon": TOON, "toon32": TOON32, "tiny": TINY}[spec_name]
    out = Path(out)
    build_base(out, spec, seed)
    vae = AutoencoderKL.from_pretrained(out / "vae")
    t0 = time.perf_counter()
    pool = torch.from_numpy(render_pool(pool_size, spec.resolution, seed, workers)).permute(0, 3, 1, 2)
    log(f"rendered {pool_size} toon portraits in {time.perf_counter() - t0:.1f} s")

    def sample_images(b, g):
        idx = randint(0, pool.shape[0], (b,), g)
        return pool[idx].float() / 127.5 - 1  # (B, 3, R, R)

    t0 = time.perf_counter()
    every = max(1, vae_steps // 10)
    mse = train_vae(vae, sample_images, vae_steps, batch_size, device=device, seed=seed,
                    callback=lambda s, loss: log(f"vae step {s}/{vae_steps} mse {loss:.5f}") if s % every == 0 else None)
    seconds = time.perf_counter() - t0
    psnr = 10 * np.log10(4.0 / mse)  # images in [-1, 1]: peak-to-peak 2
    log(f"VAE trained: {vae_steps} steps in {seconds:.0f} s, reconstruction MSE {mse:.5f} (PSNR {psnr:.1f} dB)")
    vae.to("cpu").save_pretrained(out / "vae", safe_serialization=True)
    (out / "vae_training.json").write_text(json.dumps({
        "steps": vae_steps, "batch_size": batch_size, "pool_size": pool_size, "seed": seed, "device": device,
        "seconds": round(seconds, 1), "recon_mse": mse, "recon_psnr_db": round(float(psnr), 2),
        "scaling_factor": vae.config.scaling_factor}, indent=2))
    return out


def bundle(model: Path, base: Path, dest: Path) -> None:
    """Copy a trained toon model and its base into the package (what `-m` defaults to).

    The base keeps only the U-Net's config (`--init scratch` needs no base weights) to stay small.
    """
    model, base, dest = Path(model), Path(base), Path(dest)
    keep = ("pedit.json", "unet", "image_projector", "vae", "text_encoder", "tokenizer", "image_encoder", "scheduler",
            "loss.csv", "config.json")
    target = dest / "toon-model"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in keep:
        src = model / name
        if src.is_dir():
            shutil.copytree(src, target / name)
        elif src.exists():
            shutil.copy2(src, target / name)
    meta = json.loads((target / "pedit.json").read_text())
    meta["bundled"] = True
    (target / "pedit.json").write_text(json.dumps(meta, indent=2))
    base_target = dest / "toon-base"
    shutil.rmtree(base_target, ignore_errors=True)
    shutil.copytree(base, base_target, ignore=shutil.ignore_patterns("diffusion_pytorch_model.safetensors"))
    # The base U-Net config only: a base trained from scratch never loads base U-Net weights.
    shutil.copytree(model / "vae", base_target / "vae", dirs_exist_ok=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pedit.toon.recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="build a toon base folder and train its VAE")
    b.add_argument("--out", required=True)
    b.add_argument("--spec", choices=["toon", "toon32", "tiny"], default="toon",
                   help="toon: 16x16 latents at 128 px; toon32: 32x32 (VAE factor 4); tiny: tests")
    b.add_argument("--vae-steps", type=int, default=3000)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--pool-size", type=int, default=8192)
    b.add_argument("--device", default="cpu")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("bundle", help="copy a trained model and its base into the package")
    p.add_argument("--model", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--dest", default=str(Path(__file__).parents[1] / "assets"))
    args = parser.parse_args(argv)
    if args.cmd == "base":
        build_toon_base(Path(args.out), args.spec, args.vae_steps, args.batch_size, args.pool_size, args.device,
                        args.seed, args.workers)
    else:
        bundle(Path(args.model), Path(args.base), Path(args.dest))


if __name__ == "__main__":
    main()
