"""The model card (`README.md`) of a model folder, as the Hugging Face Hub reads it.

`pedit train` and `pedit distill` write one with every model folder (`save_model`), and
`pedit eval --pairs ... --update-card` adds the measured fidelity. A card is YAML metadata
(`library_name: pedit`, `pipeline_tag: image-to-image`, `base_model`, tags, the license where known,
and after an eval a `model-index` of its results) and a body in which pedit owns two marked blocks:

    <!-- pedit:card:start -->     what the model is, its directions and prompts, how it was trained,
    <!-- pedit:card:end -->       its sampling defaults, how to use it
    <!-- pedit:results:start -->  the measured fidelity (pedit eval), or "not evaluated yet"
    <!-- pedit:results:end -->

Everything else is the user's: text outside the blocks and metadata keys pedit does not write are
kept when the card is written again. Saving new weights rewrites the card block and clears the
results (they measured other weights); an eval rewrites only the results block and the metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

from pedit.errors import ModelError

CARD_FILE = "README.md"
CARD_START, CARD_END = "<!-- pedit:card:start -->", "<!-- pedit:card:end -->"
RESULTS_START, RESULTS_END = "<!-- pedit:results:start -->", "<!-- pedit:results:end -->"
PIPELINE_TAG = "image-to-image"
# Licenses of the bases a user is likely to name; a folder trained from one carries its terms.
KNOWN_LICENSES = {
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
}
# The metadata keys pedit writes; any other key in a card's metadata is the user's and is kept.
PEDIT_KEYS = ("library_name", "pipeline_tag", "base_model", "tags", "license", "model-index")
# report.json fields of a method → (metric type, shown name), in the order shown.
METRICS = (("ssim", "ssim", "SSIM"), ("psnr", "psnr", "PSNR"),
           ("psnr_in_mask", "psnr", "PSNR inside the true edit mask (fidelity)"),
           ("psnr_outside_mask", "psnr", "PSNR outside the true edit mask (preservation)"),
           ("mask_iou", "iou", "mask IoU"), ("changed_pixels_iou", "iou", "changed-pixels IoU"))


def hub_id(source: str | None) -> str | None:
    """`source` when it names a Hub repository ("owner/name", no such local path), else None."""
    if not source or Path(source).exists():
        return None
    return source if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) else None


def card_metadata(meta: dict) -> dict:
    """The metadata pedit writes for a model folder whose pedit.json is `meta` (no results yet)."""
    base = hub_id(meta.get("base"))
    tags = ["pedit", "mcdm", "portrait-editing", "image-editing", "feature-preserving-editing"]
    if "distilled" in meta:
        tags.append("guidance-distillation")
    if meta.get("init") == "scratch" or "toon-base" in str(meta.get("base", "")):
        tags.append("toon")
    data = {"library_name": "pedit", "pipeline_tag": PIPELINE_TAG, "tags": tags}
    if base is not None:
        data["base_model"] = base
        if base in KNOWN_LICENSES:
            data["license"] = KNOWN_LICENSES[base]
    if isinstance(meta.get("license"), str):  # a folder may say its own
        data["license"] = meta["license"]
    return data


def _directions_table(meta: dict) -> list[str]:
    rows = ["| direction | task | source prompt `p_a` | target prompt `p_b` |", "|---|---|---|---|"]
    cell = lambda value: str(value).replace("|", "\\|")  # a prompt's "|" would end the cell
    for d in meta.get("directions", []):
        rows.append(f"| `{d.get('name')}` | {d.get('task')} | {cell(d.get('p_a'))} | {cell(d.get('p_b'))} |")
    return rows


def _training_lines(meta: dict) -> list[str]:
    t = meta.get("training") or {}
    distilled = meta.get("distilled")
    lines = []
    if distilled:
        teacher = distilled.get("teacher") or t.get("teacher") or "its teacher"
        ranges = ", ".join(f"{k} {lo:g}–{hi:g}" for k, (lo, hi) in (distilled.get("scale_range") or {}).items())
        lines.append(f"- **Guidance-distilled student** of `{teacher}` (`pedit distill`): the teacher's nested "
                     f"multi-condition guidance in one U-Net row per branch ({distilled.get('rows_per_step', 2)} "
                     f"rows a masked step instead of 5); guidance scales within its trained range ({ranges}).")
    base = meta.get("base")
    if base and distilled:
        lines.append(f"- **Base** (the teacher's): `{base}`; the student starts as a copy of the teacher.")
    elif base:
        scratch = meta.get("init") == "scratch"
        how = "trained from scratch on the base's frozen parts" if scratch else "initialised from it"
        if t.get("init_from"):
            how += f"; this run continued from the weights of `{t['init_from']}`"
        lines.append(f"- **Base**: `{base}` ({how}).")
    if t.get("data"):
        lines.append(f"- **Data**: the pair folder `{t['data']}` (`pedit gen-pairs`), "
                     f"{len(meta.get('directions', []))} directions.")
    steps, batch = meta.get("steps_trained"), t.get("batch_size")
    if steps is not None:
        accum = t.get("gradient_accumulation") or 1
        seen = f", {steps * batch * accum:,} samples" if isinstance(batch, int) else ""
        lines.append(f"- **Recipe**: {steps:,} optimizer steps at batch {batch} × accumulation {accum}{seen}; "
                     f"learning rate {t.get('learning_rate')}, {t.get('warmup_steps')} warm-up steps, "
                     f"mixed precision `{t.get('mixed_precision')}`, EMA decay {t.get('ema_decay')}, "
                     f"seed {t.get('seed')}.")
    if not distilled and "identity_prob" in t:
        lines.append(f"- **Paper §3.3**: identity samples with probability {t['identity_prob']}; a non-empty subset "
                     f"of the conditions {{c_s, c_im, c_p}} dropped with probability {t.get('drop_prob')}.")
    if isinstance(meta.get("training_history"), str):
        lines.append(f"- **History**: {meta['training_history']}")
    lines.append(f"- Resolution {meta.get('resolution')} px; "
                 f"prediction type `{meta.get('prediction_type', 'epsilon')}`.")
    return lines


def _sampler_words(s: dict, draws=None) -> str:
    """A sampler ("sampling" fields) in words, with its mask draws where given: the sampling defaults and the
    measured results of a card phrase it alike."""
    interval = s.get("guidance_interval")
    guided = f"guided on noise levels {interval[0]:g}–{interval[1]:g}" if interval else "every step guided"
    words = f"`{s.get('scheduler', 'ddim')}`, {s.get('steps', 20)} steps, {guided}"
    return words if draws is None else f"{words}, {draws} mask draws"


def _sampling_line(meta: dict) -> str:
    """The folder's sampler ("sampling"), and each task's where "sampling_by_task" sets one."""
    s = meta.get("sampling") or {}
    draws = (meta.get("mask") or {}).get("n_noise", 10)
    by_task = meta.get("sampling_by_task") or {}
    task_draws = {t: (meta.get("mask_by_task") or {}).get(t, {}).get("n_noise", draws) for t in by_task}
    tasks = "".join(f"; {t}s: {_sampler_words({**s, **by_task[t]}, task_draws[t])}" for t in sorted(by_task))
    return f"{_sampler_words(s, draws)}{tasks} (any `pedit edit` flag overrides them)."


def card_body(name: str, meta: dict, use_as: str | None = None) -> str:
    """The block pedit owns: what the model is, its directions, training, sampling defaults, use.
    `use_as`: what `-m` takes for it (default: the folder's name)."""
    use_as = use_as or name
    first = (meta.get("directions") or [{"name": "DIRECTION"}])[0].get("name")
    kind = "A guidance-distilled MCDM" if "distilled" in meta else "A Multi-Conditioned Diffusion Model (MCDM)"
    lines = [
        CARD_START, f"# {name}", "",
        f"{kind} for feature-preserving portrait editing, made with pedit: it edits a portrait toward a "
        "direction (a costume, an expression) and keeps every pixel outside the edit's mask "
        "(Chen et al. 2024, \"Learning Feature-Preserving Portrait Editing from Generated Pairs\").", "",
        "## Directions", "", *_directions_table(meta), "",
        "## Training", "", *_training_lines(meta), "",
        "## Sampling defaults", "", f"From this folder's `pedit.json`: {_sampling_line(meta)}", "",
        "## How to use", "", "```bash",
        f"pedit edit photo.jpg -d {first} -m {use_as} --compare      # writes photo_{first}.jpg",
        f"pedit eval -m {use_as} --pairs eval-pairs/ -o report/ --update-card   "
        "# measure it; fills in the results below",
        "```", "", "```python", "from PIL import Image", "from pedit import Editor", "",
        f"editor = Editor.from_pretrained(\"{use_as}\")",
        f"result = editor.edit(Image.open(\"photo.png\"), \"{first}\", seed=0)",
        "result.image.save(\"edited.png\")", "```", CARD_END,
    ]
    return "\n".join(lines)


def results_block(report: dict | None) -> str:
    """The results block: the "ours" row of a `pedit eval --pairs` report, or "not evaluated yet"."""
    if report is None:
        body = ["## Measured fidelity", "",
                "Not evaluated yet: `pedit eval -m MODEL --pairs PAIR_FOLDER --update-card` fills this in."]
        return "\n".join([RESULTS_START, *body, RESULTS_END])
    ours, cfg = report["methods"]["ours"], report.get("config", {})
    # reports of older pedit do not record "sampling": their flags (or 20 DDIM steps) were the sampler
    sampling = report.get("sampling", {}).get("ours") or {"scheduler": cfg.get("scheduler") or "ddim",
                                                          "steps": cfg.get("steps") or 20}
    by_task = report.get("sampling", {}).get("ours_by_task") or {"": sampling}  # a sampler per task, or one
    seed = (cfg.get("sampling") or {}).get("seed", cfg.get("seed"))  # the settings object, or an older flat config
    how = (f"{'; '.join((f'{t}s: ' if t else '') + _sampler_words(s) for t, s in sorted(by_task.items()))}, "
           f"seed {seed}, {cfg.get('precision', 'fp32')} on {cfg.get('device', 'cpu')}")
    table = ["| metric | value |", "|---|---|"]
    table += [f"| {shown} | {ours[key]:.3f} |" for key, _, shown in METRICS if isinstance(ours.get(key), (int, float))]
    body = ["## Measured fidelity", "",
            f"`pedit eval` on {report.get('pairs')} pairs of `{Path(str(cfg.get('pairs', '?'))).name}` with exact "
            f"targets ({how}), this model's own mask (Eq. 3):", "", *table, "",
            "PSNR inside and outside the true edit mask pools the squared error over every pair's pixels of that "
            "region; mask IoU is that of the mask that blended (the pixel-resolution weight at 0.5 where the model "
            "blends at pixel resolution, else the binary latent mask, upsampled); changed-pixels IoU is that of the "
            "pixels the output changed at all."]
    return "\n".join([RESULTS_START, *body, RESULTS_END])


def eval_results(name: str, report: dict) -> list:
    """The model-index entries of a report's "ours" row (huggingface_hub EvalResult)."""
    from huggingface_hub import EvalResult

    ours, dataset = report["methods"]["ours"], Path(str(report.get("config", {}).get("pairs", "pairs"))).name
    return [EvalResult(task_type=PIPELINE_TAG, dataset_type="pedit-pairs", dataset_name=dataset,
                       metric_type=mtype, metric_value=round(float(ours[key]), 4), metric_name=shown)
            for key, mtype, shown in METRICS if isinstance(ours.get(key), (int, float))]


def _replace_block(text: str, start: str, end: str, block: str) -> str:
    """`text` with its start…end block replaced by `block`, or `block` appended when it has none."""
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        return text[:i] + block + text[j + len(end):]
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"


def _parse(existing: str | None, where: Path):
    from huggingface_hub import ModelCard, ModelCardData

    if not existing or not existing.startswith("---"):  # no metadata block: the whole text is the body
        card = ModelCard("---\n---\n", ignore_metadata_errors=True)
        card.data, card.text = ModelCardData(), existing or ""
        return card
    try:
        return ModelCard(existing, ignore_metadata_errors=True)
    except Exception as e:  # the YAML block a user edited: one line, nothing written
        raise ModelError(f"{where}: the card's metadata cannot be read ({str(e).splitlines()[0]}); fix or remove "
                         "its YAML block between the --- lines.") from None


def render_card(name: str, meta: dict, existing: str | None = None, report: dict | None = None,
                where: Path = Path(CARD_FILE), use_as: str | None = None) -> str:
    """The card text of a freshly saved model folder: metadata and the pedit block from `meta`,
    the results block from `report` (None: not evaluated); a user's text and metadata keys in
    `existing` (the card that was there) are kept."""
    card = _parse(existing, where)
    data = {k: v for k, v in card.data.to_dict().items() if k not in PEDIT_KEYS}
    text = _replace_block(card.text if existing else "", CARD_START, CARD_END, card_body(name, meta, use_as))
    text = _replace_block(text, RESULTS_START, RESULTS_END, results_block(report))
    return _compose(name, {**data, **card_metadata(meta)}, text, report)


def update_results(name: str, existing: str, report: dict, where: Path = Path(CARD_FILE)) -> str:
    """`existing` with only the results block and pedit's metadata (the model-index) renewed."""
    card = _parse(existing, where)
    data = {k: v for k, v in card.data.to_dict().items() if k != "model-index"}
    text = _replace_block(card.text, RESULTS_START, RESULTS_END, results_block(report))
    return _compose(name, data, text, report)


def _compose(name: str, data: dict, text: str, report: dict | None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(**data, ignore_metadata_errors=True)
    if report is not None:
        card_data.model_name, card_data.eval_results = name, eval_results(name, report)
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{text.strip(chr(10))}\n"))


def read_card(folder: Path) -> str | None:
    """The folder's card text, None without one; a card that is a link, a FIFO or not UTF-8 → ModelError."""
    from pedit.files import regular_file_problem

    path = Path(folder) / CARD_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or (why := regular_file_problem(path)) is not None:
        raise ModelError(f"{path} {'is a link' if path.is_symlink() else why}; a model card must be a regular file.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{path} is not UTF-8 text; a model card is Markdown.") from None


def write_card_for_eval(folder: Path, report: dict) -> Path:
    """`pedit eval --update-card`: the folder's card with the report's results (a card is made from
    pedit.json when the folder has none). Written atomically; the user's prose is kept."""
    import json

    from pedit.files import write_text_atomic

    folder = Path(folder)
    name = folder.name
    existing = read_card(folder)
    if existing is None:
        meta = json.loads((folder / "pedit.json").read_text())
        text = render_card(name, meta, None, report, folder / CARD_FILE)
    else:
        text = update_results(name, existing, report, folder / CARD_FILE)
    return write_text_atomic(folder / CARD_FILE, text, overwrite=True)


def card_for_saved_folder(out: Path, meta: dict) -> str | None:
    """The card a model folder being saved into `out` gets (its pedit.json is `meta`), keeping the
    user's text of the card already there; None when that card cannot be read (a link, not UTF-8,
    broken metadata): it is then left as it is, since a finished training run must not fail on it."""
    try:
        return render_card(Path(out).name, meta, read_card(out), None, Path(out) / CARD_FILE)
    except ModelError:
        return None
