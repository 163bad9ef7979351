"""Deployment: one export spec per network, ONNX / TensorRT stages, runtime backends, `pedit bench`.

    specs.py      what each network looks like from outside: names, shapes, batch profiles
    onnx_stage.py torch → ONNX (fp32, and fp16 with fp32 I/O) with a parity check on fresh random inputs
    graph_files.py the engines folder's files: one export at a time (a lock), temp folders, external data
    pipeline.py   `pedit export`: stages, input hashes, skipping, manifest.json
    bindings.py   shape/profile/buffer planning shared by the ONNX Runtime and TensorRT runners
    trt.py        the thin TensorRT layer, 10.x and 11.x, strongly typed (optional extra `pedit[trt]`)
    backends.py   `denoise(z_in, t, context) -> eps` callables: torch, compile, onnx, trt
    bench.py      `pedit bench`: latency breakdown, FLOPs, the InstructPix2Pix comparison
    sd15.py       an MCDM of Stable Diffusion 1.5 size with random weights (no download)

The deployment runtime, torch-free (docs/runtime.md):

    runtime_files.py  what `pedit export` writes for it: tokenizer.json, the schedule table, the CLIP resize, model.json
    runtime_folder.py an exported folder checked like a model folder; the cache export `--backend onnx` makes
    runtime.py        Runtime: ONNX Runtime sessions of the five graphs, the conditions, decode; numpy noise
    runtime_editor.py RuntimeEditor: the Editor's surface over a Runtime, what `pedit edit --backend onnx|trt` runs

Importing this package is cheap: torch, onnx and onnxruntime load inside the functions; the runtime's
modules import none of torch, diffusers or transformers at all.
"""
