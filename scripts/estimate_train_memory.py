"""Estimate (not a measurement) of `pedit train`'s peak GPU memory at Stable Diffusion 1.5 size, per batch size,
with and without gradient checkpointing (docs/deployment.md, "Training memory at SD 1.5 size").

The MCDM U-Net (SD 1.5's, 8 input channels, context 77 + 257 tokens) runs one forward pass on the `meta`
device: no memory, no arithmetic, every shape real. A saved-tensors hook adds up what autograd keeps for
the backward pass (activations; parameters excluded, each tensor counted once; attention as CUDA's fused
kernels keep it), and module hooks split it
by the blocks diffusers checkpoints (each ResnetBlock2D and Transformer2DModel of the down, mid and up
blocks). With checkpointing only those blocks' inputs stay, plus, during the backward pass, one block's
recomputed activations (the largest). To that the model state is added from parameter counts: fp32
weights and gradients, the optimizer's state (AdamW: two fp32 moments; Adafactor: factored, ~0), the EMA
copy (fp32, unless --ema-decay 0), and the frozen VAE, text and image encoders in the training dtype.
Left out: the allocator's fragmentation and the library workspaces (cuDNN, cuBLAS), the largest single
temporary of the backward pass, the latent cache's batch: a floor, not a ceiling.

    python scripts/estimate_train_memory.py --resolution 512 --batches 1,4,8 -o mem.json
    python scripts/estimate_train_memory.py --resolution 128 --batches 1 --dtype fp32 --optimizer adafactor --no-ema
"""

from __future__ import annotations

import argparse
import json

import torch

GIB = 2**30
FROZEN_PARAMS = {"vae": 83_653_863, "text_encoder": 123_060_480, "image_encoder": 303_179_776}  # SD 1.5 VAE, CLIP-L text / vision


def unet_on_meta(dtype):
    from diffusers import UNet2DConditionModel

    from pedit.toon.parts import SD15, unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**unet_config(SD15), "in_channels": 8})
    return unet.to(dtype).train()


class _FusedAttention(torch.autograd.Function):
    """What CUDA's fused attention (flash / memory-efficient SDPA) keeps for backward: q, k, v, the output and
    the row log-sum-exp (B, heads, N) in fp32, never the N x N matrix. On `meta` torch would take the math
    path, which saves the whole fp32 attention matrix (1 GiB per layer at 64 x 64 latents)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("shapes only")


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    return _FusedAttention.apply(q, k, v)


def saved_activations(unet, batch: int, latent: int, tokens: int, dtype) -> dict:
    """Bytes autograd saves in one forward pass: in all, inside each checkpointable block, and those blocks' inputs."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    params = {id(p) for p in unet.parameters()}
    seen, units, stack = {}, [], []  # seen holds each tensor, so no id is reused while the pass runs
    total = [0]

    def pack(t):
        base = t._base if t._base is not None else t
        key = id(base)
        if key in params or key in seen:
            return t
        seen[key] = base
        n = base.numel() * base.element_size()
        total[0] += n
        if stack:
            stack[0]["inside"] += n  # the outermost checkpointed block holds it
        return t

    def pre(module, args):
        stack.append({"inside": 0, "inputs": sum(a.numel() * a.element_size() for a in args if torch.is_tensor(a))})

    def post(module, args, out):
        unit = stack.pop()
        if not stack:  # a nested block's tensors were counted in its outermost one
            units.append(unit)

    hooks = [m.register_forward_pre_hook(pre) for m in unet.modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]
    hooks += [m.register_forward_hook(post) for m in unet.modules() if isinstance(m, (ResnetBlock2D, Transformer2DModel))]
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa  # diffusers' AttnProcessor2_0 calls F.sdpa
    try:
        with torch.device("meta"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z = torch.empty(batch, 8, latent, latent, dtype=dtype, requires_grad=False)
            ctx = torch.empty(batch, tokens, 768, dtype=dtype, requires_grad=True)  # c_im comes from the projector
            t = torch.zeros(batch, dtype=torch.long)
            loss = unet(z, t, ctx).sample.float().pow(2).mean()
        del loss  # the graph (and every tensor it saved) lived until here
    finally:
        torch.nn.functional.scaled_dot_product_attention = real_sdpa
        for h in hooks:
            h.remove()
    inside = sum(u["inside"] for u in units)
    return {"all": total[0], "outside_blocks": total[0] - inside, "block_inputs": sum(u["inputs"] for u in units),
            "largest_block": max(u["inside"] for u in units), "blocks": len(units)}


def model_state(n_trainable: int, optimizer: str, ema: bool, frozen_bytes_per_param: int) -> int:
    per_param = 4 + 4 + (8 if optimizer == "adamw" else 0) + (4 if ema else 0)  # fp32 weights, grads, moments, EMA
    return n_trainable * per_param + sum(FROZEN_PARAMS.values()) * frozen_bytes_per_param


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                    help="activations' dtype: fp16 ~ --mixed-precision fp16 (norms kept in fp32 are not counted)")
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "adafactor"])
    ap.add_argument("--no-ema", action="store_true")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    unet = unet_on_meta(dtype)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_proj = 2 * (1024 + 4) * 768 + 768 * 768  # ImageProjector: Linear -> GELU -> Linear -> LayerNorm (about)
    state = model_state(n_unet + n_proj, args.optimizer, not args.no_ema, dtype.itemsize)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        act = saved_activations(unet, b, args.resolution // 8, 77 + 257, dtype)
        for gc in (False, True):
            kept = act["outside_blocks"] + act["block_inputs"] + act["largest_block"] if gc else act["all"]
            rows.append({"batch": b, "gradient_checkpointing": gc, "activations_gib": round(kept / GIB, 2),
                         "model_state_gib": round(state / GIB, 2), "estimate_gib": round((state + kept) / GIB, 1)})
            print(f"batch {b:2d}  checkpointing {'on ' if gc else 'off'}  activations {kept / GIB:6.2f} GiB  "
                  f"+ state {state / GIB:5.2f} GiB  = {(state + kept) / GIB:6.1f} GiB (estimate)")
    report = {"what": "estimate, not a measurement (scripts/estimate_train_memory.py)", "resolution": args.resolution,
              "activation_dtype": args.dtype, "optimizer": args.optimizer, "ema": not args.no_ema,
              "unet_parameters": n_unet, "rows": rows}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
