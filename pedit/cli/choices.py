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
