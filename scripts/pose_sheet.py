"""Draw the 12 built-in gen-pairs poses (pedit.data.poses.BUILTIN_POSES) as one labelled PNG.

    PYTHONPATH=. python scripts/pose_sheet.py docs/img/gen-pairs-poses.png
"""

from __future__ import annotations

import sys

from PIL import Image

from pedit.data.poses import BUILTIN_POSES, draw_pose
from pedit.viz import image_grid


def main(out: str, size: int = 192, per_row: int = 4) -> None:
    names = list(BUILTIN_POSES)
    strips = []  # one labelled grid per row of poses, stacked: every cell carries its own name
    for i in range(0, len(names), per_row):
        row = names[i:i + per_row]
        strips.append(image_grid([[Image.fromarray(draw_pose(BUILTIN_POSES[n], size, size)) for n in row]],
                                 col_labels=row, cell=size))
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
    y = 0
    for strip in strips:
        sheet.paste(strip, (0, y))
        y += strip.height
    sheet.save(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/img/gen-pairs-poses.png")
