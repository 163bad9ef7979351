"""The figure of docs/results.md, "The pixel-resolution mask": for pairs of a held-out folder, one row each:
input | true region | latent mask | pixel mask | output (pixel mask) | output (latent mask) | target.

    python scripts/pixel_mask_figure.py --pairs runs/toon-eval -m toon --directions laughing,santa -o docs/img/pixel-mask.png

Each edit is Editor.edit with the model folder's own settings; "latent mask" is the binary latent
mask upsampled (what the paper's mask marks), "output (latent mask)" the same edit blended by the
paper's latent mask as the folder set it before (refine "latent"), for comparison. With
`--against pixel` (for directions whose folder settings use the learned refiner) the comparison is
the hand-made pixel mask instead: input | true region | pixel mask | learned mask | output (pixel
mask) | output (learned mask) | target.

    python scripts/pixel_mask_figure.py --pairs runs/toon-eval -m toon-fast --directions santa,royal --against pixel -o docs/img/learned-mask-student.png
"""

from __future__ import annotations

import argparse
import dataclasses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--directions", default="laughing,santa")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--against", choices=("latent", "pixel"), default="latent", help="the mask kind compared with")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from pedit.data.pairs import load_rgb, read_pairs
    from pedit.edit.editor import Editor

    editor = Editor.from_pretrained(args.model, device="cpu")
    size = editor.resolution
    pairs = read_pairs(args.pairs)
    rows = []
    for name in args.directions.split(","):
        pair = next(p for p in pairs if p.direction == name)
        x_A, x_B = load_rgb(pair.x_A, size), load_rgb(pair.x_B, size)
        options = editor.default_options(name)
        result = editor.edit(Image.fromarray(x_A), name, options)
        latent_opts = dataclasses.replace(options, mask=dataclasses.replace(options.mask, refine=args.against))
        with_latent = editor.edit(Image.fromarray(x_A), name, latent_opts)
        grey = lambda a: np.repeat(np.asarray(a, dtype=np.uint8)[..., None], 3, axis=2)  # noqa: E731
        cells = size // result.mask_latent.shape[-1]
        latent = np.kron(result.mask_latent[0, 0].cpu().numpy(), np.ones((cells, cells))) * 255
        true = np.any(x_A != x_B, axis=2) * 255
        if args.against == "pixel":
            row = [grey(with_latent.mask), grey(result.mask), np.asarray(with_latent.image), np.asarray(result.image)]
        else:
            row = [grey(latent), grey(result.mask), np.asarray(result.image), np.asarray(with_latent.image)]
        rows.append(np.concatenate([x_A, grey(true), *row, x_B], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
