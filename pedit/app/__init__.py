"""`pedit app`: the local web app (Gradio) over the same library calls as the command line.

pedit.app.service holds what the page does, with no gradio import: one model loaded once per
process, each request in its own temporary folder, the CLI's own checks and messages
(pedit.photos.edit_files, pedit.stickers.pipeline). pedit.app.ui draws it with Gradio; only
`pedit app` imports that module.
"""
