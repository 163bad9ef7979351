"""The web page of `pedit app` (Gradio): an Edit tab and a Sticker-pack tab over pedit.app.service.

The page does no work of its own: each button calls one PeditApp method and shows what it returns.
A PeditError becomes a message in the page (gr.Error) and the server keeps serving. Both buttons
share one queue slot (concurrency_id "model"): one model, one request at a time, the others wait
in Gradio's queue with their position shown.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

import gradio as gr  # noqa: E402

from pedit.app.service import EditRequest, PeditApp, brush_mask  # noqa: E402
from pedit.edit.sampler import SCHEDULERS  # noqa: E402
from pedit.edit.user_mask import MASK_MODES  # noqa: E402
from pedit.errors import PeditError  # noqa: E402

# System fonts only: the default theme fetches web fonts from the internet, which a local app may not reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
MAX_FILE_SIZE = "200mb"  # uploads larger than this are refused by the server before pedit sees them
# Gradio's own copies of uploads and results: swept every 10 minutes, removed after an hour.
DELETE_CACHE = (600, 3600)


class PhotoUpload(gr.Image):
    """An image input that hands the uploaded file over untouched: pedit's load_photo judges it, with
    the CLI's checks and messages (type, size, pixel count), instead of Gradio decoding it first."""

    # Drawn by the frontend as the plain Image component. (Gradio writes a ui.pyi stub beside this
    # module when the class is made; .gitignore keeps it out of the repository.)
    is_template = True

    def preprocess(self, payload):
        return None if payload is None else payload.path


def build_ui(app: PeditApp) -> gr.Blocks:
    """The two tabs, wired to `app`."""
    with gr.Blocks(title="pedit", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# pedit\nFeature-preserving portrait editing: everything outside the edit keeps its pixels.")
        if app.editor.is_bundled:
            gr.Markdown("Using the bundled toon model (a cartoon-world demo); start `pedit app -m MODEL` for your own.")
        with gr.Tab("Edit"):
            _edit_tab(app)
        with gr.Tab("Sticker pack"):
            _sticker_tab(app)
    demo.queue(default_concurrency_limit=1)
    return demo


def _moved(value, shown):
    """A setting the user changed from the value the form showed, else None: the model folder's own for
    each direction (its pedit.json "sampling" with "sampling_by_task" for the direction's task)."""
    return None if value == shown else value


def _edit_tab(app: PeditApp) -> None:
    directions = app.directions
    defaults = app.editor.default_options()  # the model's sampling settings (pedit.json "sampling", no task's)
    with gr.Row():
        with gr.Column():
            photo = PhotoUpload(label="Photo", type="filepath", sources=["upload", "webcam"], elem_id="photo")
            direction = gr.Dropdown(directions, value=directions[0], label="Direction", elem_id="direction")
            more = gr.Dropdown(directions, value=[], multiselect=True, label="More directions (optional)",
                               info="Edited together with the first, sharing its U-Net rows; one result each",
                               elem_id="more-directions")
            with gr.Accordion("Brush mask (optional)", open=False):
                brush = gr.ImageEditor(label="Paint where the photo may change", type="numpy", sources=(),
                                       layers=False, elem_id="brush",
                                       brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"))
                mask_mode = gr.Radio(list(MASK_MODES), value="replace", label="Brush mask mode",
                                     info="replace: the brush alone; intersect / union with the model's own mask")
            with gr.Accordion("Advanced", open=False):
                seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                own = "left as shown: the model's own for each direction's task"
                steps = gr.Slider(1, 100, value=defaults.steps, step=1, label="Steps", info=own)
                scheduler = gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler", info=own)
                s_s = gr.Number(1.5, label="s_s (spatial condition scale)")
                s_im = gr.Number(1.0, label="s_im (image condition scale)")
                s_p = gr.Number(4.0, label="s_p (text condition scale)")
                use_mask = gr.Checkbox(True, label="Editing mask (off: the paper's 'w/o mask')")
            run = gr.Button("Edit", variant="primary", elem_id="edit-button")
        with gr.Column():
            slider = gr.ImageSlider(label="Before / after", type="filepath", elem_id="before-after")
            overlay = gr.Image(label="Mask overlay", type="filepath", elem_id="overlay", interactive=False)
            results = gr.Gallery(label="Every direction", columns=4, elem_id="results", visible=False)
            identity = gr.Markdown(elem_id="identity")
            download = gr.File(label="Full-size results", file_count="multiple", elem_id="download",
                               interactive=False)

    # The brush paints over the photo itself; a new photo clears old strokes.
    photo.change(lambda p: {"background": p, "layers": [], "composite": p} if p else None, photo, brush,
                 queue=False, api_name=False)

    def on_edit(photo_path, direction_name, more_names, editor_value, mode, seed_value, steps_value, scheduler_name,
                s_s_value, s_im_value, s_p_value, mask_on, progress=gr.Progress()):
        if not photo_path:
            raise gr.Error("Upload a photo first (JPEG, PNG, WebP, BMP or TIFF).")
        names = [direction_name, *(more_names or [])]  # a repeated name is refused with the CLI's message
        try:
            req = EditRequest(photo=photo_path, direction=",".join(names), seed=_whole(seed_value),
                              steps=_moved(_whole(steps_value), defaults.steps),
                              scheduler=_moved(scheduler_name, defaults.scheduler), s_s=s_s_value,
                              s_im=s_im_value, s_p=s_p_value, use_mask=bool(mask_on),
                              brush=brush_mask((editor_value or {}).get("layers")), mask_mode=mode)
            out = app.edit(req, lambda done, total, what: progress((done, total), desc=what))
        except PeditError as e:
            raise gr.Error(str(e)) from None
        for note in out.notes:
            gr.Info(note)
        shown = f"Identity distance, input vs output face: **{out.identity}**" if out.identity else ""
        every = gr.Gallery(value=[(str(e.result), e.direction) for e in out.edits], visible=len(out.edits) > 1)
        return ((str(out.input), str(out.result)), str(out.overlay), every, shown,
                [str(e.result) for e in out.edits])

    run.click(on_edit, [photo, direction, more, brush, mask_mode, seed, steps, scheduler, s_s, s_im, s_p, use_mask],
              [slider, overlay, results, identity, download], api_name="edit", concurrency_id="model")


def _sticker_tab(app: PeditApp) -> None:
    with gr.Row():
        with gr.Column():
            selfie = PhotoUpload(label="Selfie", type="filepath", sources=["upload", "webcam"], elem_id="selfie")
            name = gr.Textbox("pedit stickers", label="Pack name")
            with gr.Accordion("Advanced", open=False):
                seed = gr.Number(0, precision=0, label="Seed", minimum=0)
                steps = gr.Slider(1, 100, value=20, step=1, label="Steps per expression")
            run = gr.Button("Make the sticker pack", variant="primary", elem_id="sticker-button")
        with gr.Column():
            preview = gr.Image(label="Preview sheet", type="filepath", interactive=False, elem_id="sticker-preview")
            stickers = gr.Gallery(label="Stickers", columns=4, elem_id="stickers")
            downloads = gr.File(label="Sticker pack", file_count="multiple", interactive=False, elem_id="pack")

    def on_pack(selfie_path, pack_name, seed_value, steps_value, progress=gr.Progress()):
        if not selfie_path:
            raise gr.Error("Upload a selfie first (JPEG, PNG, WebP, BMP or TIFF).")
        try:
            out = app.sticker_pack(selfie_path, seed=_whole(seed_value), steps=_whole(steps_value),
                                   title=pack_name, progress=lambda done, total, what: progress((done, total or None),
                                                                                             desc=what))
        except PeditError as e:
            raise gr.Error(str(e)) from None
        for note in out.notes:
            gr.Info(note)
        return str(out.preview), [str(p) for p in out.stickers], [str(p) for p in out.downloads]

    run.click(on_pack, [selfie, name, seed, steps], [preview, stickers, downloads], api_name="sticker_pack",
              concurrency_id="model")


def _whole(value):
    """A whole number from a page field (sliders send 20.0); anything else is left for the config to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def serve(app: PeditApp, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> gr.Blocks:
    """Start the server; with block=False return the running Blocks (tests; `demo.close()` stops it)."""
    demo = build_ui(app)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                max_file_size=MAX_FILE_SIZE, theme=THEME, footer_links=["api"], quiet=not block, ssr_mode=False)
    return demo
