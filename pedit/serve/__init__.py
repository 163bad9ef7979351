"""Serving on Triton Inference Server: the model repository `pedit export --triton` writes
(pedit.serve.repository, its configs pedit.serve.configs), the models inside it (the edit,
pedit.serve.pedit_model; ONNX Runtime networks on the Python backend, pedit.serve.network_model),
a local `tritonserver` (pedit.serve.server, `pedit serve`), and the client (pedit.serve.client,
`pedit edit --server`, `pedit app --server`). docs/serving.md has the whole picture.
"""
