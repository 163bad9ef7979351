"""Choices several commands share (kept here so `pedit --help` imports nothing heavy)."""

BACKENDS = ("torch", "compile", "onnx", "trt")  # pedit.export.backends.BACKENDS (that module is not imported at start-up)
