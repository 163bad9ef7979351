"""A guidance-distilled MCDM (issue 18, item 3; Meng et al., "On Distillation of Guided Diffusion Models",
CVPR 2023): what its folder says, and how its rows carry the guidance scales.

The student predicts the teacher's nested multi-condition eps~ (pedit.edit.guidance.multi_cfg, 4 teacher
rows) in one row, for any scales (s_s, s_im, s_p) inside the range it was distilled on. The scales
enter as Fourier features through a class embedding added to the U-Net's timestep embedding
(diffusers' `class_embed_type="projection"`), whose last layer starts at zero: the untrained student
computes exactly the teacher's fully conditioned row e(s, im, p).

How the scales reach the U-Net without a new backend input: a distilled row's context holds one more
token after cat([c_p, c_im]), whose first three entries are the row's (s_s, s_im, s_p) and the rest
zeros. `MCDM.forward` splits it off before the cross-attention, so the attention sees the teacher's
77 + K tokens, and every backend keeps its `denoise(z_in, t, context)` signature (the context is
77 + K + 1 long). The token rides on c_im (`with_scales`): every place that builds rows from
EditConditions builds them for a distilled model too.

pedit.json of a distilled folder:

    "distilled": {"kind": "guidance", "rows_per_branch": 1, "rows_per_step": 2,
                  "scale_range": {"s_s": [1.0, 2.5], "s_im": [1.0, 2.0], "s_p": [1.0, 7.5]},
                  "teacher": "...", "steps_trained": N, "fidelity": "what was measured, on which pairs"}

No diffusers (the editing path imports this from the TorchScript cache too), and torch only inside the
functions that build or run a student's U-Net: the scale token and the folder's settings are also what
the torch-free runtime reads (pedit.arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pedit.arrays import cat, is_torch_array, xp_of
from pedit.errors import ConfigError

SCALE_NAMES = ("s_s", "s_im", "s_p")
FREQUENCIES = 8  # Fourier frequencies per scale: periods 16, 8, ..., 0.125 scale units
MAX_SCALE = 15.0  # below the longest period: scales s and s + 16 would give the same features
FEATURES = 2 * FREQUENCIES * len(SCALE_NAMES)  # the class embedding's input width
DEFAULT_RANGE = {"s_s": (1.0, 2.5), "s_im": (1.0, 2.0), "s_p": (1.0, 7.5)}
SETTABLE = ("kind", "rows_per_branch", "rows_per_step", "scale_range", "teacher", "steps_trained", "fidelity")
TYPES = {"kind": str, "rows_per_branch": int, "rows_per_step": int, "scale_range": dict, "teacher": str,
         "steps_trained": int, "fidelity": str}  # pedit.json "distilled": each name's type
ROWS_PER_STEP = 2  # a masked edit's step: p_b and p_a, one row each (1 without the mask)


def scale_features(scales):
    """(N, 3) scales → (N, FEATURES) float32: sin and cos of each scale at FREQUENCIES octaves."""
    import torch

    freqs = 2 * math.pi * 2.0 ** torch.arange(FREQUENCIES, device=scales.device, dtype=torch.float32) / 16
    angles = scales.float()[..., None] * freqs  # (N, 3, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)


def scale_token(scales, rows: int, width: int, like):
    """The context token of `rows` rows at `scales`, (s_s, s_im, s_p) for all or a (rows, 3) array:
    (rows, 1, width) in `like`'s dtype and on its device, zeros but the first three entries."""
    xp = xp_of(like)
    device = {"device": like.device} if is_torch_array(like) else {}
    token = xp.zeros((rows, 1, width), dtype=like.dtype, **device)
    if hasattr(scales, "shape"):
        values = scales.to(device=like.device) if is_torch_array(scales) else scales
    else:
        values = xp.asarray([float(v) for v in scales], dtype=xp.float32, **device)
    token[:, 0, : len(SCALE_NAMES)] = xp.astype(values, like.dtype)
    return token


def split_scale_token(context):
    """A distilled row's context (N, 77 + K + 1, D) → (context (N, 77 + K, D), scales (N, 3))."""
    return context[:, :-1], context[:, -1, : len(SCALE_NAMES)]


def is_student(unet) -> bool:
    """Whether a U-Net embeds guidance scales (a distilled student's: class_embed_type "projection")."""
    return getattr(unet.config, "class_embed_type", None) == "projection"


def unet_eps(unet, z_in, t, context):
    """The U-Net's output (N, 4, h, w) for rows z_in (N, 8, h, w) and contexts (N, L, D): a teacher's
    U-Net reads all L = 77 + K tokens; a student's splits the scale token off and embeds the scales.
    Every backend calls the U-Net through this (eager MCDM, torch.compile, the ONNX export's wrapper)."""
    if not is_student(unet):
        return unet(z_in, t, encoder_hidden_states=context).sample
    context, scales = split_scale_token(context)
    return unet(z_in, t, encoder_hidden_states=context, class_labels=scale_features(scales).to(context.dtype)).sample


def _rebuilt(unet, **config):
    """A U-Net of `unet`'s config with `config` changed, on its device and in its dtype (weights not loaded)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config({**unet.config, **config}).to(device=unet.device, dtype=unet.dtype)


def student_unet(unet):
    """A student U-Net from a teacher's: the same weights plus a scale embedding whose output layer is
    zero, so that it computes exactly the teacher's e(s, im, p) until it is trained."""
    import torch

    student = _rebuilt(unet, class_embed_type="projection", projection_class_embeddings_input_dim=FEATURES)
    missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise ValueError(f"student U-Net does not match its teacher: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        student.class_embedding.linear_2.weight.zero_()
        student.class_embedding.linear_2.bias.zero_()
    return student


def plain_unet(unet):
    """A student's U-Net without its scale embedding (what diffusers' own pipelines can call): the same
    cost per row but for the embedding, for timing baselines such as InstructPix2Pix in `pedit bench`."""
    plain = _rebuilt(unet, class_embed_type=None, projection_class_embeddings_input_dim=None)
    kept = {k: v for k, v in unet.state_dict().items() if not k.startswith("class_embedding.")}
    plain.load_state_dict(kept)
    return plain


def as_tuple(scales) -> tuple[float, float, float]:
    """(s_s, s_im, s_p) of a GuidanceScales or a 3-sequence."""
    if hasattr(scales, "s_p"):
        return (float(scales.s_s), float(scales.s_im), float(scales.s_p))
    return tuple(float(v) for v in scales)


def with_scales(cond, scales):
    """EditConditions whose c_im carries the scale token at its end: (B, K + 1, D). Rows built from it
    (guidance_rows, prompt_rows, the mask's contexts) are a distilled model's rows at `scales`."""
    from pedit.model.conditions import EditConditions

    b, _, width = cond.c_im.shape
    c_im = cat([cond.c_im, scale_token(as_tuple(scales), b, width, cond.c_im)], axis=1)
    return EditConditions(cond.c_s, c_im, cond.c_p_b, cond.c_p_a, cond.c_p_null)


@dataclass(frozen=True)
class Distilled:
    """What a distilled folder's pedit.json "distilled" says."""

    scale_range: dict  # name -> (lo, hi)

    def check_scales(self, scales) -> None:
        """ConfigError unless every scale lies inside the range the student was distilled on."""
        for name, value in zip(SCALE_NAMES, as_tuple(scales)):
            lo, hi = self.scale_range[name]
            if not lo <= value <= hi:
                raise ConfigError(
                    f"{name} = {value:g} is outside the range this distilled model was trained for ({lo:g} to "
                    f"{hi:g}); pass a value inside it, or edit with its teacher model.")

    def check_edit(self, scales, interval) -> None:
        """An edit's scales inside the range, and with a guidance interval the unit scales of its unguided steps too."""
        self.check_scales(scales)
        if interval is not None:
            self.check_scales((1.0, 1.0, 1.0))


def check_meta_scales(meta: dict, scales, interval) -> None:
    """Distilled.check_edit for a folder's pedit.json (a teacher's: nothing); what `pedit eval` and
    `pedit bench` check before any work (Editor.plan_many checks its own)."""
    distilled = distilled_for(meta)
    if distilled is not None:
        distilled.check_edit(scales, interval)


def distilled_for(meta: dict) -> Distilled | None:
    """The folder's distillation (pedit.json "distilled"), None for a teacher-style MCDM."""
    settings = meta.get("distilled")
    if settings is None:
        return None
    ranges = {name: tuple(float(v) for v in settings["scale_range"][name]) for name in SCALE_NAMES}
    return Distilled(scale_range=ranges)


def check_distilled_settings(meta: dict, where) -> None:
    """ValueError naming the bad entry when pedit.json's "distilled" is malformed."""
    from pedit.validate import check_section

    if "distilled" not in meta:
        return
    settings = check_section(where, "distilled", meta["distilled"], TYPES, required=("kind", "scale_range"))
    if settings.get("kind") != "guidance":
        raise ValueError(f"{where}: \"distilled\" must be an object with kind \"guidance\" and only "
                         f"{', '.join(SETTABLE)}.")
    if settings.get("rows_per_branch", 1) != 1 or settings.get("rows_per_step", ROWS_PER_STEP) != ROWS_PER_STEP:
        raise ValueError(f"{where}: \"distilled\": this pedit runs guidance-distilled students of one row per branch, "
                         f"{ROWS_PER_STEP} rows a masked step; the folder says rows_per_branch "
                         f"{settings.get('rows_per_branch', 1)!r}, rows_per_step {settings.get('rows_per_step', ROWS_PER_STEP)!r}.")
    ranges = settings.get("scale_range")
    ok = isinstance(ranges, dict) and set(ranges) == set(SCALE_NAMES) and all(
        isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and math.isfinite(v) for v in r) and 0 <= r[0] <= r[1] <= MAX_SCALE
        for r in ranges.values())
    if not ok:
        raise ValueError(f"{where}: \"distilled\": scale_range must give [lo, hi] with 0 <= lo <= hi <= {MAX_SCALE:g} "
                         f"for each of {', '.join(SCALE_NAMES)}, got {ranges!r}.")
