"""What the pixel-resolution mask costs per edit on this machine: medians of repeated runs, in one process.

    OMP_NUM_THREADS=1 python scripts/bench_pixel_mask.py -m toon --reps 15

For each direction of examples/toon.png: a whole Editor.edit with the model folder's settings, the
pixel weight alone (pedit.edit.pixel_mask.refined_weight, or for refine "learned" the learned
refiner's pedit.edit.learned_mask.learned_weight, on that edit's own arrays), the latent
kind's weight (keep_outside with refine "latent") for comparison, and the VAE decode of the
reconstruction (which change_from "reconstruction" adds), each timed `reps` times, interleaved.
Prints the medians and the pixel mask's share of the edit (its decode included where it needs one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--directions", default="laughing,royal")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from pedit.data.pairs import square_rgb
    from pedit.edit.editor import Editor, keep_outside, tensor_to_uint8, uint8_to_tensor
    from pedit.arrays import to_host
    from pedit.edit.job import run
    from pedit.edit.learned_mask import learned_weight
    from pedit.edit.pixel_mask import refined_weight

    editor = Editor.from_pretrained(args.model, device="cpu", cache=True)
    image = Image.open("examples/toon.png").convert("RGB")
    original = square_rgb(image, editor.resolution)
    out = {}
    for name in args.directions.split(","):
        options = editor.default_options(name)
        result = editor.edit(image, name, options)  # warm-up, and the arrays the weight is timed on
        raw = np.asarray(result.raw)
        cond = editor.conditions(uint8_to_tensor(original), editor.direction(name))
        job = editor.job([cond], [options])
        run([job], editor.denoise)  # the edit's own difference map and latent mask
        diff, mask = to_host(job.maps[0])[0], job.model_masks[0]
        c_s = cond.c_s
        recon = tensor_to_uint8(editor.model.parts.decode(c_s))
        latent_cfg = dataclasses.replace(options.mask, refine="latent")
        edit_s, pixel_s, latent_s, decode_s = [], [], [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            editor.edit(image, name, options)
            edit_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            if options.mask.refine == "learned":
                learned_weight(options.mask, diff, original, raw, to_host(mask))
            else:
                refined_weight(options.mask, diff, original, raw, recon)
            pixel_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            keep_outside(original, raw, mask.cpu(), latent_cfg)
            latent_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            editor.model.parts.decode(c_s)  # the reconstruction, decoded when change_from is "reconstruction"
            decode_s.append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1000 for k, v in (("edit_ms", edit_s), ("pixel_weight_ms", pixel_s),
                                                           ("latent_weight_and_composite_ms", latent_s),
                                                           ("reconstruction_decode_ms", decode_s))}
        med["pixel_share_of_edit"] = med["pixel_weight_ms"] / med["edit_ms"]
        if options.mask.change_from == "reconstruction":  # the decode is part of the pixel mask's cost then
            med["pixel_share_of_edit"] += med["reconstruction_decode_ms"] / med["edit_ms"]
        med["refine"] = options.mask.refine
        out[name] = med
        print(name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in med.items()}),
              file=sys.stderr, flush=True)  # progress; stdout is the JSON alone (`> result.json`)
    print(json.dumps({"model": str(editor.model.path), "reps": args.reps, "threads": torch.get_num_threads(),
                      "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()], "results": out}, indent=2))


if __name__ == "__main__":
    main()
