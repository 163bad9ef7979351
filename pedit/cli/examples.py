"""One example line at the end of `pedit --help` and of each command's help, as huggingface_hub's
command line ends its help. A command without an entry here fails tests/test_cli_examples.py."""

from __future__ import annotations

import click

# Command name (None: the `pedit` group itself) → one runnable example, its flags the command's own.
EXAMPLES = {
    None: "pedit edit examples/toon.png -d laughing --compare",
    "directions": "pedit directions -m my-model",
    "gen-pairs": "pedit gen-pairs --source toon -n 200 --exact --seed 1000000 -o eval-pairs/",
    "train": "pedit train --data pairs/ -o my-model --base runwayml/stable-diffusion-v1-5",
    "distill": "pedit distill -m my-model --data pairs/ -o my-fast-model",
    "edit": "pedit edit photo.jpg -d royal -m my-model --compare",
    "eval": "pedit eval -m my-model --pairs eval-pairs/ -o report/ --update-card",
    "sticker-pack": "pedit sticker-pack selfie.jpg -o stickers/ -m my-model --base runwayml/stable-diffusion-v1-5",
    "export": "pedit export -m my-model -o engines/ --fp16",
    "bench": "pedit bench --backend torch,onnx --vs ip2p",
    "app": "pedit app -m my-model --port 7860",
}


def epilog(example: str) -> str:
    """The help's last lines: "Example:" and the command, never rewrapped by click (\\b)."""
    return f"\b\nExample:\n  {example}"


def add_examples(group: click.Group) -> None:
    """Give the group and each of its commands its example, unless a command sets an epilog itself."""
    group.epilog = group.epilog or epilog(EXAMPLES[None])
    for name, command in group.commands.items():
        if not command.epilog and name in EXAMPLES:
            command.epilog = epilog(EXAMPLES[name])
