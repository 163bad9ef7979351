"""Choices several commands share (kept here so `pedit --help` imports nothing heavy)."""

BACKENDS = ("torch", "compile", "onnx", "trt")  # pedit.export.backends.BACKENDS (that module is not imported at start-up)
SCHEDULER_NAMES = ("ddim", "dpm", "euler")  # pedit.edit.sampler.SCHEDULERS


def interval_option(ctx, param, value):
    """`--guidance-interval LO,HI` → (lo, hi) floats (their range is checked by the config)."""
    import click

    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not two numbers LO,HI (noise levels t / T, e.g. 0.2,0.8)") from None
    return (lo, hi)


INTERVAL_HELP = ("Guide only the steps whose noise level t / T lies in LO,HI (e.g. 0.2,0.8); the others take "
                 "every scale at 1: 2 U-Net rows instead of 5 (1 with no mask). 0,1 guides every step. Default: the "
                 "model's pedit.json \"sampling\", else every step guided.")
STEPS_HELP = "Sampling steps. Default: the model's pedit.json \"sampling\", else 20."
SCHEDULER_HELP = "Sampler. Default: the model's pedit.json \"sampling\", else ddim."


SAMPLING_FIELDS = ("steps", "seed", "scheduler", "guidance_interval", "s_s", "s_im", "s_p", "no_mask", "mask_noises",
                   "mask_batch")


def sampling_options(no_mask: bool = True, what: str = "the edit"):
    """The options of pedit.model.sampling_settings.SamplingSettings, declared once for every command that
    samples edits (edit, eval, bench): each defaults to the model folder's pedit.json setting where one
    exists. `no_mask=False` leaves out --no-mask (eval scores both with its methods)."""
    import click

    def scale(flag, what_scale):
        return click.option(flag, type=float, help=f"Guidance scale of the {what_scale}. Default: the model's "
                                                   "pedit.json \"sampling\", else " +
                                                   {"--s-s": "1.5", "--s-im": "1.0", "--s-p": "4.0"}[flag] + ".")

    options = [
        click.option("--steps", type=click.IntRange(min=1), help=STEPS_HELP),
        click.option("--seed", type=int, default=0, show_default=True, help=f"The seed of {what}'s noise."),
        click.option("--scheduler", type=click.Choice(SCHEDULER_NAMES), help=SCHEDULER_HELP),
        click.option("--guidance-interval", callback=interval_option, metavar="LO,HI", help=INTERVAL_HELP),
        scale("--s-s", "spatial condition c_s"),
        scale("--s-im", "image condition c_im"),
        scale("--s-p", "text condition c_p"),
        click.option("--mask-noises", type=click.IntRange(1, 1024),
                     help="Noise draws for the editing mask. Default: the model's pedit.json, else 10."),
        click.option("--mask-batch", type=click.IntRange(0, 1024),
                     help="Noise draws per U-Net call of the editing mask (bounds memory; same mask). 0: all in one "
                          "call. Default: the model's pedit.json, else 0."),
    ]
    if no_mask:
        options.append(click.option("--no-mask", is_flag=True,
                                    help="Plain MCDM sampling, no editing mask (the paper's 'w/o mask')."))

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def sampling_settings(kwargs: dict):
    """The SamplingSettings of a command's parsed options, popped from `kwargs` (the command's other
    options stay). A bad combination is the settings' own ConfigError, the same message everywhere."""
    from pedit.model.sampling_settings import SamplingSettings

    values = {name: kwargs.pop(name) for name in SAMPLING_FIELDS if name in kwargs}
    use_mask = not values.pop("no_mask", False)
    return SamplingSettings(use_mask=use_mask, **values)
