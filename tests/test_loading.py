"""Model and base folders are untrusted input (pedit.model.loading): safetensors only unless --allow-pickle,
single-file checkpoints and incomplete layouts refused with a message that says what to do, no
waiting on a network that is not there, and a save → load round trip that keeps every weight."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pedit.data.directions import BUILTIN
from pedit.errors import ModelError, UnsafeModelError
from pedit.model.loading import base_unet, load_base, load_model, resolve_source
from pedit.model.saving import save_model

PICKLE_MESSAGE = (
    "{folder} has only pickle weights (diffusion_pytorch_model.bin); pickle files can run code when loaded. "
    "Convert them to safetensors, or pass --allow-pickle if you trust the source."
)
BASE_LAYOUT = "vae, text_encoder, tokenizer, unet, scheduler"


def _copy(src: Path, tmp_path: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(src, tmp_path / name))


def _pickle_only(unet_dir: Path) -> None:
    """Replace the U-Net's safetensors by the same weights as a pickle checkpoint."""
    st = unet_dir / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(st)), unet_dir / "diffusion_pytorch_model.bin")
    st.unlink()


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- pickle weights


def test_a_pickle_only_unet_is_refused_and_the_message_names_allow_pickle(random_model, tmp_path):
    model = _copy(random_model, tmp_path)
    _pickle_only(model / "unet")
    with pytest.raises(UnsafeModelError) as e:
        load_model(model)
    assert str(e.value) == PICKLE_MESSAGE.format(folder=model / "unet")
    assert isinstance(e.value, ModelError)  # the CLI maps it like any other model problem


def test_a_pickle_only_unet_loads_with_allow_pickle_and_has_the_same_weights(random_model, tmp_path):
    model = _copy(random_model, tmp_path)
    _pickle_only(model / "unet")
    loaded = load_model(model, allow_pickle=True)
    assert _equal_state(loaded.mcdm.unet, load_model(random_model).mcdm.unet)


def test_a_base_with_a_pickle_only_unet_needs_allow_pickle(tiny_base, tmp_path):
    base = _copy(tiny_base, tmp_path, "base")
    _pickle_only(base / "unet")
    root, _parts = load_base(base)  # the frozen parts are still safetensors
    with pytest.raises(UnsafeModelError) as e:
        base_unet(root)
    assert str(e.value) == PICKLE_MESSAGE.format(folder=base / "unet")
    assert base_unet(root, allow_pickle=True).config.in_channels == 4


def test_a_component_without_any_weights_is_a_model_error(random_model, tmp_path):
    model = _copy(random_model, tmp_path)
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError) as e:
        load_model(model)
    assert str(e.value) == f"{model / 'unet'} has no weights (no .safetensors file)."


# ---------------------------------------------------------------- base sources


@pytest.mark.parametrize("name", ["v1-5-pruned.ckpt", "model.pt", "model.safetensors"])
def test_a_single_checkpoint_file_as_base_asks_for_a_diffusers_folder(tmp_path, name):
    import pickle

    f = tmp_path / name
    marker = tmp_path / "unpickled"
    f.write_bytes(pickle.dumps(_CreatesAFileWhenUnpickled(str(marker))))  # what a hostile checkpoint does
    with pytest.raises(ModelError) as e:
        load_base(f)
    assert str(e.value) == (
        f"Base model {f} is a single checkpoint file; pedit needs a diffusers folder ({BASE_LAYOUT}). "
        "Convert it with diffusers' conversion scripts first."
    )
    assert not marker.exists()  # never unpickled
    pickle.loads(f.read_bytes()).close()  # ... though the file is live: unpickling it does run code
    assert marker.exists()


class _CreatesAFileWhenUnpickled:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_another_file_as_base_is_a_model_error(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(ModelError) as e:
        load_base(f)
    assert str(e.value) == f"Base model {f} is a file; expected a folder with {BASE_LAYOUT}."


def test_a_hub_id_missing_from_the_cache_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelError) as e:
        load_base("nobody/not-a-model")
    elapsed = time.perf_counter() - start
    assert str(e.value) == (
        "Base model 'nobody/not-a-model' is not in the local hub cache and HF_HUB_OFFLINE is set. "
        "Download it on a connected machine (`hf download nobody/not-a-model`) or pass a local diffusers folder."
    )
    assert elapsed < 20  # no 50 s retry loop against a network that is not there (a generous bound)


@pytest.mark.parametrize("source", ["no-such-folder", "a/b/c", "./nobody/x"])
def test_a_source_that_is_neither_a_folder_nor_a_hub_id(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as e:
        resolve_source(source, "Base model", ("unet",))
    assert str(e.value) == f"Base model {source!r} is neither an existing folder nor a hub id like 'owner/name'."


def test_an_empty_folder_is_not_a_base(tmp_path):
    with pytest.raises(ModelError) as e:
        load_base(tmp_path)
    assert str(e.value) == (
        f"Base model {tmp_path} is missing {BASE_LAYOUT}; expected a folder with {BASE_LAYOUT} "
        "(a Stable Diffusion diffusers layout, or a folder written by `pedit train`)."
    )


def test_a_folder_with_only_a_unet_lists_the_missing_subfolders(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelError) as e:
        load_base(tmp_path)
    assert str(e.value).startswith(f"Base model {tmp_path} is missing vae, text_encoder, tokenizer, scheduler; ")


def test_the_tiny_base_loads(tiny_base):
    root, parts = load_base(tiny_base)
    assert root == tiny_base
    assert parts.vae.config.latent_channels == 4 and parts.num_image_tokens == 5


# ---------------------------------------------------------------- model folders


def test_a_model_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ModelError) as e:
        load_model(tmp_path / "nope")
    assert str(e.value) == f"Model folder {tmp_path / 'nope'} does not exist. Pass a folder written by `pedit train` with -m."


def test_a_file_is_not_a_model_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelError) as e:
        load_model(f)
    assert str(e.value) == f"Model {f} is a file; -m takes a folder written by `pedit train`."


def test_a_model_folder_without_pedit_json_and_unet(random_model, tmp_path):
    model = _copy(random_model, tmp_path)
    (model / "pedit.json").unlink()
    shutil.rmtree(model / "unet")
    with pytest.raises(ModelError) as e:
        load_model(model)
    assert str(e.value) == (
        f"Model folder {model} is missing pedit.json, unet; a model folder holds pedit.json, unet, image_projector, "
        "vae, text_encoder, tokenizer, image_encoder, scheduler (what `pedit train` writes)."
    )


@pytest.mark.parametrize("text, why", [
    ("{not json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("{}", "'resolution'"),
    ('{"resolution": "large"}', "invalid literal for int() with base 10: 'large'"),
    ("[1, 2]", "list indices must be integers or slices, not str"),
])
def test_a_corrupt_pedit_json_is_a_model_error(random_model, tmp_path, text, why):
    model = _copy(random_model, tmp_path)
    (model / "pedit.json").write_text(text)
    with pytest.raises(ModelError) as e:
        load_model(model)
    assert str(e.value) == f"{model / 'pedit.json'} is not a valid pedit model description ({why})."


def _edit_projector_config(model: Path, **changes) -> None:
    f = model / "image_projector" / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))


def test_a_projector_with_another_token_count_has_mismatched_shapes(random_model, tmp_path):
    model = _copy(random_model, tmp_path)
    _edit_projector_config(model, num_tokens=10)  # 1 + 3x3 patches: loads, but does not fit the encoder
    with pytest.raises(ModelError) as e:
        load_model(model)
    assert str(e.value) == (
        f"Model folder {model} has mismatched shapes: image_projector num_tokens 10 != image encoder tokens 5."
    )


def test_a_projector_whose_weights_do_not_fit_its_config_is_a_model_error(random_model, tmp_path):
    model = _copy(random_model, tmp_path)
    _edit_projector_config(model, text_width=16)  # the stored weights are 32 wide
    with pytest.raises(ModelError) as e:
        load_model(model)
    msg = str(e.value)
    assert msg.startswith(f"Image projector in {model / 'image_projector'} could not be loaded: ")
    assert "torch.Size([16])" in msg and "torch.Size([32])" in msg
    assert "\n" not in msg  # the first line of the library's message only


def test_save_then_load_keeps_every_weight_and_the_description(random_model, tmp_path):
    first = load_model(random_model)
    out = tmp_path / "saved"
    (out / "checkpoints").mkdir(parents=True)  # a training folder: save_model must leave the rest alone
    meta = {"base": "somewhere", "resolution": 32, "directions": [vars(d) for d in BUILTIN.values()], "steps_trained": 7}
    assert save_model(out, first.mcdm, first.parts, meta) == out
    again = load_model(out)
    assert _equal_state(again.mcdm.unet, first.mcdm.unet)
    assert _equal_state(again.mcdm.image_projector, first.mcdm.image_projector)
    assert _equal_state(again.parts.vae, first.parts.vae)
    saved = json.loads((out / "pedit.json").read_text())
    assert saved["conventions"] == {
        "c_s": "VAE posterior mode x scaling factor",
        "unet_input": "cat([z_t, c_s], channels)",
        "context": "cat([c_p, c_im], tokens), length 77 + K",
        "null": {"c_s": "zeros", "c_im": "zeros at the context level", "c_p": "empty prompt"},
    }
    assert saved["num_image_tokens"] == 5 and saved["resolution"] == 32 and saved["steps_trained"] == 7
    assert saved["directions"] == [vars(d) for d in BUILTIN.values()]
    assert again.resolution == 32 and again.meta == saved
    assert (out / "checkpoints").is_dir()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".model-tmp")]


def test_saving_over_a_model_replaces_it(random_model, tmp_path):
    first = load_model(random_model)
    out = tmp_path / "saved"
    save_model(out, first.mcdm, first.parts, {"resolution": 32, "directions": []})
    with torch.no_grad():
        for p in first.mcdm.unet.parameters():
            p.add_(1.0)
    save_model(out, first.mcdm, first.parts, {"resolution": 32, "directions": []})
    assert _equal_state(load_model(out).mcdm.unet, first.mcdm.unet)
