"""Benchmark (not a test): SD gen-pairs throughput, pairs/s, with SD1.5-size random weights.

Measures one batch of the real generation path (pedit.data.sd_pairs._generate_batch: prompt
encoding, ControlNet + U-Net on 4 rows per pair each step through pedit.edit.sampler.sample, VAE
decode) on a canvas of R × 2R, and, in the same run on the same networks, a plain classifier-free
guided text-to-image of one R × R image (2 rows a step) as the baseline. Reports medians of the
repeats (after one warm-up) and their ratio. No weights are downloaded: the networks are built
from SD 1.5's configs with random weights (the cost of a forward pass does not depend on them).

    # the issue's figure (a GPU): 512 × 1024, 30 steps, batch 4, fp16
    python scripts/bench_gen_pairs.py --device cuda --resolution 512 --steps 30 --batch-size 4
    # reduced, for a CPU
    python scripts/bench_gen_pairs.py --device cpu --resolution 256 --steps 2 --batch-size 1 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def sd15_parts(device, dtype, with_controlnet: bool):
    """SD 1.5-size U-Net (860M), ControlNet (361M), VAE (84M), CLIP-L text encoder, random weights."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from pedit.data.sd_models import SDParts
    from pedit.toon.parts import BOS, EOS, build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's config
    cnet = ControlNetModel.from_unet(unet) if with_controlnet else None
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.18215)
    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    build_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    vocab = tokenizer.get_vocab()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS]))
    for net in (unet, cnet, vae, text):
        if net is not None:
            net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    scheduler_config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                        "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                        "steps_offset": 1, "prediction_type": "epsilon"}
    return SDParts(unet, vae, text, tokenizer, scheduler_config, cnet, None, "random SD 1.5 layout")


def timed(fn, repeats: int, device) -> list[float]:
    fn()  # warm-up (kernels, allocator, caches)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default=None, help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--no-pose", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)

    from pedit.data.composable import PairStrengths
    from pedit.data.directions import BUILTIN
    from pedit.data.sd_pairs import SDPairsConfig, _generate_batch, plan_pair
    from pedit.data.poses import BUILTIN_POSES
    from pedit.edit.sampler import make_scheduler, sample

    device = torch.device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    parts = sd15_parts(device, dtype, not args.no_pose)
    cfg = SDPairsConfig(output="unused", n=args.batch_size, base="random", controlnet=None if args.no_pose else "random",
                        resolution=args.resolution, steps=args.steps, batch_size=args.batch_size, use_pose=not args.no_pose,
                        device=str(device))
    directions = [BUILTIN[d] for d in cfg.directions]
    poses = None if args.no_pose else list(BUILTIN_POSES.values())
    plans = [plan_pair(cfg, i, directions, poses, 0) for i in range(args.batch_size)]
    h = args.resolution // 8
    cache: dict = {}

    def pairs():
        _generate_batch(cfg, parts, plans, [], None, {}, cache, sample, make_scheduler, h, h, device)

    def baseline():  # one R × R image, plain CFG: 2 rows a step, no ControlNet
        from pedit.data.sd_pairs import encode_prompts

        z = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(0)).to(device)
        ctx = encode_prompts(parts, ["", "a person, santa claus costume"], cache)
        g = PairStrengths().cfg

        def denoise(z_in, t, context):
            return parts.unet(z_in.to(dtype), t, encoder_hidden_states=context.to(dtype), return_dict=False)[0].float()

        z_0 = sample(denoise, make_scheduler("ddim", parts.scheduler_config), z, None, ctx,
                     lambda e: e[:1] + g * (e[1:] - e[:1]), args.steps, rows=2)
        parts.vae.decode(z_0.to(dtype) / parts.vae.config.scaling_factor)

    with torch.inference_mode():
        t_pairs = timed(pairs, args.repeats, device)
        t_base = timed(baseline, args.repeats, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    med_pairs, med_base = statistics.median(t_pairs), statistics.median(t_base)
    result = {
        "device": name, "precision": precision, "resolution": f"{args.resolution}x{2 * args.resolution}",
        "steps": args.steps, "batch_size": args.batch_size, "pose": not args.no_pose, "repeats": args.repeats,
        "batch_seconds": [round(t, 3) for t in t_pairs], "pairs_per_s": round(args.batch_size / med_pairs, 4),
        "baseline_image_seconds": [round(t, 3) for t in t_base], "baseline_images_per_s": round(1 / med_base, 4),
        "pair_cost_in_baseline_images": round(med_pairs / args.batch_size / med_base, 2),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
