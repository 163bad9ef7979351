"""sticker-pack (paper §4, "Real-World Applications"): one selfie in, an expression sticker set out.

augment.py     seeded crops and homographies of the selfie, the face kept inside the frame
dreambooth.py  DreamBooth with LoRA (peft, saved and loaded through diffusers), cached and resumable
cartoon.py     cartoon portrait candidates from a style prompt, scored, one picked
matte.py       the plain background keyed out with a soft edge; the white outline
pack.py        sticker files, the WhatsApp and Telegram folders, size limits, preview sheet
pipeline.py    the stages end to end (`pedit sticker-pack`), written atomically
"""
