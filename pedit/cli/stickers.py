"""`pedit sticker-pack`: one selfie to an expression sticker set (paper §4)."""

from __future__ import annotations

import contextlib

import click

from pedit.cli.progress import make_console, make_progress, show_config


@click.command("sticker-pack")
@click.argument("selfie", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Pack folder to write (stickers/, whatsapp/, telegram/, ...).")
@click.option("-m", "--model", type=click.Path(), help="Expression MCDM folder (default: the bundled toon model).")
@click.option("--base", help="Stable Diffusion base for DreamBooth and the cartoon (a local diffusers folder or a hub id).")
@click.option("--expressions", default="angry,shocked,laughing,crying", show_default=True, help="Comma-separated directions, one sticker each.")
@click.option("--style", help="Cartoon style prompt ({subject} marks the subject; default: a flat sticker cartoon).")
@click.option("--candidates", type=click.IntRange(min=1), default=4, show_default=True, help="Cartoon portraits to draw.")
@click.option("--pick", type=click.IntRange(min=0), help="Keep cartoon candidate N (0-based) instead of the best-scored.")
@click.option("--skip-cartoonize", is_flag=True, help="The selfie is already a cartoon: no DreamBooth, no cartoon stage.")
@click.option("--require-face", is_flag=True, help="Fail when no face is found instead of using the centred square.")
@click.option("--detector", type=click.Choice(["default", "haar", "hog", "cnn"]), default="default", show_default=True,
              help="Face detector that places the crop, as in `pedit edit`.")
@click.option("--overwrite", is_flag=True, help="Replace a previous sticker pack in -o (never a folder holding other files).")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True, help="Expression edit steps.")
@click.option("--cartoon-steps", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--train-steps", type=click.IntRange(min=1), default=400, show_default=True, help="DreamBooth LoRA steps.")
@click.option("--lora-rank", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=16, show_default=True, help="Augmented views of the selfie.")
@click.option("--prior-preservation", is_flag=True, help="DreamBooth's class-prior loss (draws class images first).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--title", "--name", "title", default="pedit stickers", show_default=True,
              help="The pack's title in the apps (1 to 64 characters).")
@click.option("--author", default="pedit", show_default=True, help="The pack's author (publisher) in WhatsApp (1 to 128 characters).")
@click.option("--emoji", "emoji", help="Emoji per expression, e.g. angry=😠,shocked=😲😮 (1 to 3 each; default: "
              "angry 😠, shocked 😲, laughing 😂, crying 😢, others 🙂).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="LoRA cache (default: $PEDIT_CACHE or ~/.cache/pedit).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in the model folders. Only for trusted files.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("-q", "--quiet", is_flag=True)
def sticker_pack(selfie, output, model, base, expressions, style, candidates, pick, skip_cartoonize, require_face,
                 detector, overwrite, steps, cartoon_steps, train_steps, lora_rank, views, prior_preservation, seed, title,
                 author, emoji,
                 cache_dir, max_pixels, allow_pickle, device, quiet):
    """Make a sticker pack from one selfie: an expression sticker each, WhatsApp and Telegram folders."""
    from rich.markup import escape

    from pedit.stickers.formats import parse_emoji_map
    from pedit.stickers.pipeline import STAGES, StickerConfig, make_sticker_pack

    cfg = StickerConfig(
        selfie=selfie, output=output, model=model, base=base,
        expressions=tuple(s.strip() for s in expressions.split(",") if s.strip()), style=style, pick=pick,
        candidates=candidates, skip_cartoonize=skip_cartoonize, require_face=require_face, detector=detector,
        overwrite=overwrite,
        steps=steps, cartoon_steps=cartoon_steps, train_steps=train_steps, lora_rank=lora_rank, views=views,
        prior_preservation=prior_preservation, seed=seed, title=title, author=author,
        emoji=parse_emoji_map(emoji) if emoji is not None else {}, cache_dir=cache_dir, max_pixels=max_pixels,
        allow_pickle=allow_pickle, device=device,
    )
    console = make_console(quiet)
    show_config(console, cfg)
    with contextlib.ExitStack() as stack:
        live = {}  # opened at the first stage event: an early error prints nothing but itself

        def on_progress(p):
            if not live:
                live["bar"] = stack.enter_context(make_progress(console))
                live["tasks"] = {s: live["bar"].add_task(s, total=None, info="", start=False) for s in STAGES}
            bar, task = live["bar"], live["tasks"][p.stage]
            if p.skipped:
                bar.update(task, total=1, completed=1, info=f"[dim]{escape(p.info)}[/dim]")
                return
            bar.start_task(task)
            bar.update(task, total=p.total, completed=p.done, info=escape(p.info))

        out = make_sticker_pack(cfg, on_progress, note=lambda s: console.print(f"[dim]{escape(s)}[/dim]"))
    console.print(f"Sticker pack written to {escape(str(out))} (preview: {escape(str(out / 'preview.png'))})")
    click.echo(str(out))

