"""The edit as a steppable job (pedit.edit.job): driven alone, interleaved with others, and on numpy arrays.

The bundled models' pinned bytes (tests/test_bundled.py, tests/test_coldstart.py) hold Editor.edit, which
runs one EditJob; these tests hold the job itself: its rows and advance are the whole edit, several jobs
at different steps share one U-Net call per tick and each gives its lone edit, and the same job code
steps numpy arrays (the torch-free runtime's) to the torch path's numbers.

"Its lone edit" is exact for ONNX Runtime on the CPU (tests/test_runtime_edit.py, the serving tests) and up to
float rounding for eager torch, whose CPU kernels round a row differently at another batch size
(docs/design-notes.md, "Bytes"): `_same_edit` says what that allows.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pedit.data.pairs import square_rgb
from pedit.edit.editor import Editor, uint8_to_tensor
from pedit.edit.job import run

CASES = [("laughing", 0), ("royal", 1), ("angry", 2)]


@pytest.fixture(scope="module", params=["toon", "toon-fast"])
def editor(request):
    return Editor.from_pretrained(request.param, device="cpu")


@pytest.fixture(scope="module")
def photo():
    return Image.open("examples/toon.png")


def _job(editor, photo, direction, seed, callback=None):
    options = dataclasses.replace(editor.default_options(direction), seed=seed)
    square = square_rgb(photo, editor.resolution)
    cond = editor.conditions(uint8_to_tensor(square), editor.direction(direction))
    return editor.job([cond], [options], callback), square


def _bytes(editor, job, square) -> bytes:
    return editor.finish(square, editor.decode(job.z_0[0]), job, 0).image.tobytes()


def _lone(editor, photo, direction, seed):
    job, _ = _job(editor, photo, direction, seed)
    run([job], editor.denoise)
    return job


def _same_edit(editor, job, lone, square):
    """`job` (run beside others, or split by max_rows) gives `lone`'s edit up to eager torch's batch-size
    rounding: the same latent mask, latents within 1e-4, the input's exact bytes wherever either blend
    weight is 0, and at most 0.1 % of pixels off, by a fraction of a level on average."""
    assert torch.equal(job.masks[0], lone.masks[0])
    torch.testing.assert_close(job.z_0[0], lone.z_0[0], rtol=0, atol=1e-4)
    got = editor.finish(square, editor.decode(job.z_0[0]), job, 0)
    want = editor.finish(square, editor.decode(lone.z_0[0]), lone, 0)
    a, b = np.asarray(got.image).astype(int), np.asarray(want.image).astype(int)
    kept = (np.asarray(got.mask) == 0) & (np.asarray(want.mask) == 0)
    assert kept.any() and np.array_equal(a[kept], square[kept])  # every kept pixel is the input's, exactly
    assert (a != b).any(-1).mean() <= 1e-3 and np.abs(a - b).mean() < 0.05


def test_a_job_stepped_by_hand_is_the_edit(editor, photo):
    job, square = _job(editor, photo, "laughing", 3)
    calls = 0
    while not job.done:  # what a server's loop does: ask for rows, run them anywhere, hand back the output
        rows = job.rows()
        assert rows.t.shape == (len(rows),) and rows.context.shape[0] == len(rows)
        job.advance(editor.denoise(rows.z_in, rows.t, rows.context))
        calls += 1
    want = editor.edit(photo, "laughing", seed=3)
    assert _bytes(editor, job, square) == want.image.tobytes()
    assert torch.equal(job.masks[0], want.mask_latent) and 0 < float(want.mask_latent.mean()) < 1
    options = editor.default_options("laughing")
    assert calls == len(range(0, options.mask.n_noise, options.mask.batch or options.mask.n_noise)) + options.steps


def test_jobs_at_different_steps_share_one_call_a_tick_and_give_their_lone_edits(editor, photo):
    alone = [_lone(editor, photo, direction, seed) for direction, seed in CASES]
    jobs = [_job(editor, photo, direction, seed) for direction, seed in CASES]
    first = jobs[0][0]
    for _ in range(3):  # the first job is three calls ahead: the others' rows meet it mid-sampling
        rows = first.rows()
        first.advance(editor.denoise(rows.z_in, rows.t, rows.context))
    calls, mixed = [], []

    def counted(z_in, t, context):
        calls.append(z_in.shape[0])
        mixed.append(len(set(t.tolist())) > 1)  # rows of different steps in one call
        return editor.denoise(z_in, t, context)

    run([job for job, _ in jobs], counted)
    assert any(mixed)  # the test exercised what it claims: one call held several timesteps
    ticks = max(len(range(0, j.settings[0].mask.n_noise, j.settings[0].mask.batch or j.settings[0].mask.n_noise))
                + j.settings[0].steps for j, _ in jobs)
    assert len(calls) == ticks  # one call a tick, not one a job
    for (job, square), lone in zip(jobs, alone):
        _same_edit(editor, job, lone, square)


def test_the_job_steps_numpy_arrays_to_the_torch_numbers(editor, photo):
    """The same EditJob over numpy arrays (the torch-free runtime's form): conditions, noise and the
    U-Net's output as numpy, the light DDIM given the torch path's alphas table."""
    from pedit.edit.job import EditJob
    from pedit.edit.schedules import ddim_scheduler, noise_scheduler

    torch_job, _ = _job(editor, photo, "laughing", 5)
    run([torch_job], editor.denoise)

    square = square_rgb(photo, editor.resolution)
    cond = editor.conditions(uint8_to_tensor(square), editor.direction("laughing"))
    cond_np = type(cond)(*(getattr(cond, f.name).numpy() for f in dataclasses.fields(cond)))
    options = dataclasses.replace(editor.default_options("laughing"), seed=5)
    config = editor.model.parts.scheduler_config
    table = noise_scheduler(config).alphas_cumprod.numpy()
    assert options.scheduler == "ddim"

    def new_noise(seed):  # the same numbers the torch path draws, handed over as numpy
        g = torch.Generator().manual_seed(seed)
        return lambda shape: torch.randn(shape, generator=g).numpy()

    def denoise_np(z_in, t, context):
        assert isinstance(z_in, np.ndarray) and isinstance(t, np.ndarray) and t.shape == (z_in.shape[0],)
        out = editor.denoise(torch.from_numpy(z_in), torch.from_numpy(t), torch.from_numpy(context))
        return out.numpy()

    job = EditJob([cond_np], [options], lambda s: ddim_scheduler({**config, "clip_sample": False}, table),
                  noise_scheduler(config, table), new_noise, editor.rows)
    run([job], denoise_np)
    assert isinstance(job.z_0[0], np.ndarray)
    np.testing.assert_array_equal(job.model_masks[0], torch_job.model_masks[0].numpy())
    np.testing.assert_allclose(job.z_0[0], torch_job.z_0[0].numpy(), rtol=0, atol=1e-5)


def test_a_failing_job_fails_alone_and_the_others_finish(editor, photo):
    """One job's NaN (or bad input, or a progress callback whose client left) is that job's error; the
    jobs beside it finish with the edit they give alone."""
    from pedit.errors import NonFiniteError

    alone = _lone(editor, photo, "royal", 1)
    square = square_rgb(photo, editor.resolution)

    def leaving(i, n):
        if i == 2:
            raise ConnectionError("client gone")

    jobs = [_job(editor, photo, "laughing", 0)[0], _job(editor, photo, "royal", 1)[0],
            _job(editor, photo, "angry", 2, callback=leaving)[0]]
    poisoned = jobs[0]
    real = editor.denoise

    def denoise(z_in, t, context):  # the first job's rows come first in every call: NaN them
        out = real(z_in, t, context)
        if not poisoned.done:
            out[: len(poisoned.rows())] = float("nan")
        return out

    run(jobs, denoise, raise_errors=False)
    assert isinstance(jobs[0].error, NonFiniteError) and isinstance(jobs[2].error, ConnectionError)
    assert jobs[1].error is None and jobs[1].done
    _same_edit(editor, jobs[1], alone, square)
    with pytest.raises(NonFiniteError):  # the CLI's form: the failure is raised once every job has run
        run([_job(editor, photo, "laughing", 0)[0]], lambda z, t, c: real(z, t, c) * float("nan"))


def test_max_rows_splits_a_tick_into_calls_an_engine_can_take(editor, photo):
    alone = [_lone(editor, photo, d, s) for d, s in CASES]
    calls = []

    def counted(z_in, t, context):
        calls.append(z_in.shape[0])
        return editor.denoise(z_in, t, context)

    again = [_job(editor, photo, d, s) for d, s in CASES]
    run([job for job, _ in again], counted, max_rows=5)
    assert max(calls) <= 5 and len(calls) > max(j.settings[0].steps for j, _ in again)
    for (job, square), lone in zip(again, alone):
        _same_edit(editor, job, lone, square)
