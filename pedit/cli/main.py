"""The `pedit` command line: parse options, build one config, call one library function, show it.

Heavy imports (torch, diffusers) happen inside command bodies so `pedit --help` stays fast.
Errors: any `PeditError` becomes `Error: <message>` on stderr and exit 1, in one place
(`PeditGroup.invoke`); bad flags are click usage errors (exit 2); `PEDIT_DEBUG=1` shows tracebacks.
Progress bars and tables are drawn with rich on stderr, so stdout stays machine-readable.
"""

from __future__ import annotations

import click

from pedit import __version__
from pedit.cli.app import app
from pedit.cli.data import directions, gen_pairs
from pedit.cli.edit import edit
from pedit.cli.errors import PeditGroup
from pedit.cli.eval import eval_cmd
from pedit.cli.examples import add_examples
from pedit.cli.export import bench, export_cmd
from pedit.cli.stickers import sticker_pack
from pedit.cli.train import distill, train


@click.group(cls=PeditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pedit")
def cli():
    """Feature-preserving portrait editing with a Multi-Conditioned Diffusion Model.

    \b
    pedit edit photo.jpg --direction royal     edit a portrait (bundled toon model by default)
    pedit train --data pairs/ -o my-model      train an MCDM on a pair folder
    pedit distill --data pairs/ -o fast-model  a 2-row-a-step student of a trained MCDM
    pedit gen-pairs --source toon -o pairs/    make a pair folder
    pedit eval --pairs eval-pairs/             measure a model against ground truth
    pedit sticker-pack selfie.jpg -o out/      four expression stickers, app-ready folders
    pedit export -o engines/                   ONNX (and --trt TensorRT) engines; pedit bench times them
    pedit app                                  the web app (pip install 'pedit[app]')
    """


for command in (directions, gen_pairs, train, distill, edit, eval_cmd, export_cmd, bench, sticker_pack, app):
    cli.add_command(command)
add_examples(cli)  # one example line ends each command's help (pedit/cli/examples.py)


def main(argv=None):
    cli.main(args=argv, prog_name="pedit")


if __name__ == "__main__":
    main()
