"""Shared test fixtures. Tests never touch the network: the hub is switched
off before anything imports huggingface_hub, and models are built in-process from seeds.

`PEDIT_TEST_DEVICE=cuda make test` puts the tests' tiny models and inputs on that device (`TEST_DEVICE`,
the `device` fixture), so one run on a GPU machine finds device bugs everywhere at once; tests that
cannot run there are marked `cpu_only("why")` and skipped with that reason. Unset, everything runs on
the CPU, training included (accelerate would otherwise pick a GPU it finds).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
TEST_DEVICE = os.environ.get("PEDIT_TEST_DEVICE", "").strip() or "cpu"
if TEST_DEVICE == "cpu":
    os.environ["ACCELERATE_USE_CPU"] = "true"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def load_script(name: str):
    """scripts/<name>.py imported as a module (the scripts are not a package), for tests of its functions."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def counting_calls(editor):
    """Count the rows of each U-Net call `editor` makes: returns (the list of row counts, the real denoise);
    restore it with `editor.denoise = inner` when done."""
    calls = []
    inner = editor.denoise
    editor.denoise = lambda z, t, c: calls.append(z.shape[0]) or inner(z, t, c)
    return calls, inner


def with_settings(kwargs: dict) -> dict:
    """kwargs with the SamplingSettings fields among them gathered into `sampling` (built here, where a
    bad one is refused): for the configs that embed the settings."""
    from dataclasses import fields

    from pedit.model.sampling_settings import SamplingSettings

    names = {f.name for f in fields(SamplingSettings)}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return {**rest, "sampling": SamplingSettings(**{k: v for k, v in kwargs.items() if k in names})}


def same_edit(alone, many, square) -> None:
    """`many` (an EditResult of a direction edited beside others, edit_many) is `alone` (its edit alone) up
    to eager torch's batch-size rounding (the promise of edit_many with eager torch; docs/design-notes.md,
    "Bytes"; exact with ONNX Runtime, tests/test_runtime_edit.py): the same latent mask, the input's
    bytes (`square`, (R, R, 3) uint8) wherever both blend weights are 0, at most 0.1 % of pixels off."""
    import numpy as np
    import torch

    assert torch.equal(alone.mask_latent, many.mask_latent)
    a, b = np.asarray(many.image).astype(int), np.asarray(alone.image).astype(int)
    kept = (np.asarray(many.mask) == 0) & (np.asarray(alone.mask) == 0)
    assert kept.any() and np.array_equal(a[kept], square[kept])
    assert (a != b).any(-1).mean() <= 1e-3 and np.abs(a - b).mean() < 0.05


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_only(reason): runs only when PEDIT_TEST_DEVICE is cpu (or unset)")
    if TEST_DEVICE != "cpu":
        import torch

        try:
            torch.empty(1, device=TEST_DEVICE)
        except (RuntimeError, AssertionError) as e:  # no CUDA build, no GPU, or no such index
            pytest.exit(f"PEDIT_TEST_DEVICE={TEST_DEVICE}: torch cannot use that device ({e}).", returncode=4)


def pytest_collection_modifyitems(config, items):
    if TEST_DEVICE == "cpu":
        return
    for item in items:
        marker = item.get_closest_marker("cpu_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"CPU only ({reason}); PEDIT_TEST_DEVICE={TEST_DEVICE}"))


def pytest_report_header(config):
    return f"pedit test device: {TEST_DEVICE} (PEDIT_TEST_DEVICE)"


@pytest.fixture(scope="session")
def device() -> str:
    """Where a test puts its tiny models and inputs: PEDIT_TEST_DEVICE, default cpu."""
    return TEST_DEVICE


@pytest.fixture(scope="session", autouse=True)
def _traced_cache_dir(tmp_path_factory):
    """pedit's caches (pedit.cache: TorchScript copies, engines, LoRAs) go into a temp folder, never ~/.cache."""
    os.environ["PEDIT_CACHE"] = str(tmp_path_factory.mktemp("pedit-cache"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A TINY Stable-Diffusion-layout base folder (32 px, 4x4x4 latents), built once per session."""
    from pedit.toon.parts import TINY, build_base

    return build_base(tmp_path_factory.mktemp("bases") / "tiny-base", TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory) -> Path:
    """8 imperfect toon pairs at 32 px, one per direction (read-only: copy before changing)."""
    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs

    return generate_pairs(GenPairsConfig(str(tmp_path_factory.mktemp("pairs") / "pairs"), n=8, resolution=32))


@pytest.fixture
def tiny_pairs_copy(tiny_pairs, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_pairs, tmp_path / "pairs"))


@pytest.fixture(scope="session")
def random_model(tiny_base, tmp_path_factory) -> Path:
    """An untrained MCDM model folder over the tiny base, listing the 8 built-in directions."""
    import torch

    from pedit.data.directions import BUILTIN
    from pedit.model.loading import base_unet, load_base
    from pedit.model.saving import save_model
    from pedit.model.mcdm import MCDM, ImageProjector, widen_conv_in

    root, parts = load_base(tiny_base)
    torch.manual_seed(0)
    proj = ImageProjector(parts.image_encoder.config.hidden_size, parts.text_encoder.config.hidden_size, 4,
                          parts.num_image_tokens)
    mcdm = MCDM(widen_conv_in(base_unet(root)), proj)
    meta = {"base": str(tiny_base), "resolution": 32, "directions": [vars(d) for d in BUILTIN.values()]}
    return save_model(tmp_path_factory.mktemp("model") / "random-model", mcdm, parts, meta)


@pytest.fixture(scope="module")
def editor(random_model):
    """The Editor over the untrained tiny model (one per test module)."""
    from pedit.edit.editor import Editor

    return Editor.from_pretrained(random_model, device=TEST_DEVICE)


@pytest.fixture(scope="module")
def portrait():
    """A 32 px toon portrait (identity 3)."""
    from PIL import Image

    from pedit.toon.world import render

    return Image.fromarray(render(3, size=32))
