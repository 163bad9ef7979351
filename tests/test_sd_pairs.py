"""gen-pairs --source sd (paper §3.2, Eq. 2) on a tiny random SD, a tiny ControlNet and a tiny
IP-Adapter face state, all built here: Eq. 2 against a hand computation, one U-Net call per step,
poses drawn alike in both halves, resume, sharding, scores, and the errors of bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pedit.data.composable import PairStrengths, composable_eps, pair_eps, side_masks
from pedit.errors import ConfigError
from conftest import TEST_DEVICE  # PEDIT_TEST_DEVICE, default cpu

# ---------------------------------------------------------------------------------------------
# Eq. 2


def test_eq2_matches_a_hand_computation_column_by_column():
    g = torch.Generator().manual_seed(0)
    e_u, e_p, e_pa, e_pb = (torch.randn(2, 4, 3, 6, generator=g) for _ in range(4))
    st = PairStrengths(s_d=0.3, s_a=0.5, s_b=0.9, cfg=2.0)
    got = composable_eps(e_u, e_p, e_pa, e_pb, st)
    for col in range(6):
        left = col < 3
        by_hand = (0.3 * (e_u + 2.0 * (e_p - e_u))
                   + (0.5 * (e_u + 2.0 * (e_pa - e_u)) if left else 0)
                   + (0.9 * (e_u + 2.0 * (e_pb - e_u)) if not left else 0))
        torch.testing.assert_close(got[..., col], by_hand[..., col])
    # The 4-row layout: rows are 4 blocks of B (uncond, p, p_a, p_b).
    torch.testing.assert_close(pair_eps(torch.cat([e_u, e_p, e_pa, e_pb]), st), got)


def test_only_s_a_leaves_the_right_half_following_no_prompt():
    g = torch.Generator().manual_seed(1)
    e_u, e_p, e_pa, e_pb = (torch.randn(1, 4, 2, 8, generator=g) for _ in range(4))
    got = composable_eps(e_u, e_p, e_pa, e_pb, PairStrengths(s_d=0, s_a=1.0, s_b=0, cfg=3.0))
    assert torch.count_nonzero(got[..., 4:]) == 0
    torch.testing.assert_close(got[..., :4], (e_u + 3.0 * (e_pa - e_u))[..., :4])


def test_side_masks_split_exactly_at_w():
    m_a, m_b = side_masks(10)
    assert m_a[0, 0, 0].tolist() == [1] * 5 + [0] * 5
    assert torch.equal(m_a + m_b, torch.ones_like(m_a))
    with pytest.raises(ValueError):
        side_masks(7)


def test_strengths_are_validated():
    with pytest.raises(ConfigError, match="s_a must be a finite number"):
        PairStrengths(s_a=float("nan"))
    with pytest.raises(ConfigError, match="all 0"):
        PairStrengths(0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Poses


def test_pose_is_drawn_identically_in_both_halves_in_openpose_colours():
    from pedit.data.poses import BUILTIN_POSES, COLORS, LIMB_ALPHA, pair_pose_image

    image = pair_pose_image(BUILTIN_POSES["turn-left"], 64, 48)
    assert image.shape == (64, 96, 3)
    assert np.array_equal(image[:, :48], image[:, 48:])
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    neck_to_nose = tuple(int(c * LIMB_ALPHA) for c in COLORS[12])  # limb 12 is neck → nose
    assert neck_to_nose in colours and tuple(COLORS[0]) in colours  # the nose dot in full red
    # turned left: the right ear (keypoint 16) is hidden, so its colour is not drawn as a dot
    assert BUILTIN_POSES["turn-left"].keypoints[16] is None


def test_pose_jitter_mirrors_left_and_right():
    from pedit.data.poses import BUILTIN_POSES

    pose = BUILTIN_POSES["turn-left"]
    mirrored = pose.jittered(1.0, 0.0, 0.0, mirror=True)
    assert mirrored.keypoints[17] is None and mirrored.keypoints[16] is not None  # the hidden ear swapped sides
    assert mirrored.keypoints[0][0] == pytest.approx(1 - pose.keypoints[0][0])


def _openpose_json(path: Path, flat, **extra) -> Path:
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": flat}], **extra}))
    return path


def test_openpose_keypoints_json_in_pixels_is_normalised(tmp_path):
    from pedit.data.poses import load_keypoints_json

    flat = [0.0] * 54
    flat[0:3] = [100, 50, 0.9]  # nose
    flat[3:6] = [100, 120, 0.8]  # neck
    poses = load_keypoints_json(_openpose_json(tmp_path / "k.json", flat, canvas_width=200, canvas_height=200))
    assert poses[0].keypoints[0] == (0.5, 0.25) and poses[0].keypoints[1] == (0.5, 0.6)
    assert poses[0].keypoints[2] is None  # confidence 0 = not visible


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}', "must be 54 numbers"),
    ('{"people": []}', "holds no poses"),
    ('{"something": 1}', "expected OpenPose"),
    ('{"poses": [{"keypoints": [[0.5, 0.5]]}]}', "has 1 keypoints"),
])
def test_malformed_keypoints_json_says_what_is_wrong(tmp_path, content, message):
    from pedit.data.poses import load_keypoints_json
    from pedit.errors import PoseError

    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(PoseError, match=message):
        load_keypoints_json(path)


def test_photo_poses_without_controlnet_aux_name_the_package(tmp_path, monkeypatch):
    import sys

    from pedit.data.poses import load_poses
    from pedit.errors import PoseError

    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # absent here anyway; make it certain
    with pytest.raises(PoseError, match="need controlnet_aux"):
        load_poses(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Scores


def test_layout_score_ignores_the_edit_and_punishes_misalignment():
    from pedit.data.pair_scores import layout_score

    rng = np.random.default_rng(0)
    base = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    base = np.kron(base[::8, ::8], np.ones((8, 8, 1), np.uint8))  # blocky: survives the blur
    edited = base.copy()
    edited[20:44, 10:54] = 255 - edited[20:44, 10:54]  # 26 % of the pixels: a costume
    shifted = np.roll(base, 12, axis=1)
    assert layout_score(base, base) == 1.0
    assert layout_score(base, edited) > 0.99
    assert layout_score(base, shifted) < layout_score(base, edited) - 0.05


def test_identity_distance_uses_pedit_faces_and_is_skipped_without_the_model(monkeypatch):
    from skimage.data import astronaut

    from pedit import faces
    from pedit.data import pair_scores

    face = astronaut()
    if faces.face_model_available():
        same = pair_scores.identity_distance(face, np.ascontiguousarray(face[:, ::-1]))
        assert same is not None and same < faces.SAME_PERSON_THRESHOLD  # the mirror image is the same person
        assert pair_scores.identity_distance(face, np.zeros_like(face)) is None  # no face in one half
        assert pair_scores.face_model_note() is None
    monkeypatch.setattr(faces, "face_model_available", lambda: False)
    assert pair_scores.identity_distance(face, face) is None
    assert "face model is not installed" in pair_scores.face_model_note()


# ---------------------------------------------------------------------------------------------
# Tiny networks


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_base, tmp_path_factory) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    torch.manual_seed(0)
    cnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 4, 4, 4))
    with torch.no_grad():  # from_unet zero-initialises the outputs: make them matter
        for p in cnet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path_factory.mktemp("cnet") / "controlnet"
    cnet.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def tiny_ip_adapter(tiny_base, tmp_path_factory) -> Path:
    """The face variant's layout (IP-Adapter full-face: 257 CLIP tokens, an MLP projection)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("ip") / "ip-adapter"
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=2, projection_dim=32))  # 16 × 16 patches + 1 class token = 257, as ViT-H/14 at 224
    encoder.save_pretrained(root / "models" / "image_encoder")
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    E, C = 32, unet.config.cross_attention_dim
    state = {"image_proj.proj.0.weight": torch.randn(E, E) * 0.2, "image_proj.proj.0.bias": torch.zeros(E),
             "image_proj.proj.2.weight": torch.randn(C, E) * 0.2, "image_proj.proj.2.bias": torch.zeros(C),
             "image_proj.proj.3.weight": torch.ones(C), "image_proj.proj.3.bias": torch.zeros(C)}
    key = 1
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            block = name.split(".")[0]
            idx = int(name.split(".")[1]) if block != "mid_block" else -1
            widths = unet.config.block_out_channels
            hidden = widths[-1] if block == "mid_block" else (widths[idx] if block == "down_blocks" else widths[::-1][idx])
            state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, C) * 0.2
            state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, C) * 0.2
            key += 2
    save_file(state, str(root / "models" / "ip-face.safetensors"))
    return root


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory) -> Path:
    from skimage.data import astronaut

    folder = tmp_path_factory.mktemp("ids") / "identities"
    folder.mkdir()
    Image.fromarray(astronaut()).save(folder / "astronaut.png")
    Image.fromarray(np.ascontiguousarray(astronaut()[:, ::-1])).save(folder / "astronaut-mirror.png")
    return folder


def _cfg(out, tiny_base, tiny_controlnet, **kw):
    from pedit.data.sd_pairs import SDPairsConfig

    args = dict(output=str(out), n=4, base=str(tiny_base), controlnet=str(tiny_controlnet), resolution=32, steps=2,
                device=TEST_DEVICE, contact_sheet=4)
    args.update(kw)
    return SDPairsConfig(**args)


def _read_photo(path):
    from pedit.photos.photo import load_photo

    return np.asarray(load_photo(path).rgb)


def _run(cfg, made_log=None):
    from pedit.data.sd_pairs import generate_sd_pairs
    from pedit.edit.sampler import make_scheduler, sample

    events = []
    out = generate_sd_pairs(cfg, sample, make_scheduler, lambda d, t, m: events.append((d, t, m)), read_photo=_read_photo)
    if made_log is not None:
        made_log.extend(events)
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def _image_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


# ---------------------------------------------------------------------------------------------
# Generation


def test_one_unet_call_per_step_covers_all_terms_of_all_pairs(tiny_base, tiny_controlnet, tiny_ip_adapter,
                                                               identity_dir, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from pedit.data.pairs import read_pairs

    calls = []
    real_forward = UNet2DConditionModel.forward

    def counting(self, sample, *args, **kwargs):
        calls.append((sample.shape[0], sample.shape[-1], kwargs.get("added_cond_kwargs")))
        return real_forward(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counting)
    from diffusers import ControlNetModel

    poses = []
    real_cnet = ControlNetModel.forward

    def seeing(self, sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs):
        poses.append(controlnet_cond)
        return real_cnet(self, sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", seeing)
    cfg = _cfg(tmp_path / "pairs", tiny_base, tiny_controlnet, n=4, batch_size=2, steps=3,
               identity_dir=str(identity_dir), ip_adapter=(str(tiny_ip_adapter), "models", "ip-face.safetensors", "image_encoder"))
    out = _run(cfg)
    # 2 batches × 3 steps, each one call on 4 rows × 2 pairs, over the 2w-wide latent (4 × 2 = 8).
    assert [(b, w) for b, w, _ in calls] == [(8, 8)] * 6
    assert poses[0].shape == (8, 3, 32, 64) and poses[0].amax() > 0
    assert torch.equal(poses[0][..., :32], poses[0][..., 32:])  # the same skeleton in both halves, pixel-exact
    embeds = calls[0][2]["image_embeds"][0]
    assert embeds.shape[:3] == (8, 1, 257)  # (rows, num_images, tokens): diffusers' IP-Adapter layout
    assert not torch.equal(embeds[0], embeds[2]) and torch.equal(embeds[2], embeds[4])  # null id row 0, id rows 2, 4
    pairs = read_pairs(out)
    assert [p.id for p in pairs] == ["000000", "000001", "000002", "000003"]
    rows = _rows(out)
    assert rows[0]["identity"]["file"] in {"astronaut.png", "astronaut-mirror.png"}
    assert {r["identity"]["file"] for r in rows} == {"astronaut.png", "astronaut-mirror.png"}  # identities cycle
    assert rows[0]["strengths"] == {"s_d": 0.3, "s_a": 0.7, "s_b": 0.7}
    assert rows[0]["controlnet"] == str(tiny_controlnet) and rows[0]["pose"]["source"] == "builtin"
    assert 0 <= rows[0]["scores"]["layout"] <= 1
    assert "person" not in rows[0]["p_a"] and rows[0]["subject"] in rows[0]["p_a"]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 3 * 64 and sheet.height > 4 * 64


def test_pose_and_identity_change_the_pair(tiny_base, tiny_controlnet, tiny_ip_adapter, identity_dir, tmp_path):
    ip = (str(tiny_ip_adapter), "models", "ip-face.safetensors", "image_encoder")
    full = _image_bytes(_run(_cfg(tmp_path / "full", tiny_base, tiny_controlnet, n=1, identity_dir=str(identity_dir),
                                  ip_adapter=ip)))
    no_id = _image_bytes(_run(_cfg(tmp_path / "no-id", tiny_base, tiny_controlnet, n=1, identity_dir=str(identity_dir),
                                   ip_adapter=ip, use_identity=False)))
    no_pose = _image_bytes(_run(_cfg(tmp_path / "no-pose", tiny_base, None, n=1, use_pose=False, identity_dir=str(identity_dir),
                                     ip_adapter=ip)))
    assert full["000000_x_B.png"] != no_id["000000_x_B.png"]
    assert full["000000_x_B.png"] != no_pose["000000_x_B.png"]
    assert "000000_pose_image.png" in full and "000000_pose_image.png" not in no_pose
    row = _rows(tmp_path / "no-pose")[0]
    assert row["controlnet"] is None and row["pose"] is None


def test_an_elite_style_encoder_appends_identity_words_to_the_conditioned_rows(tiny_base, tiny_controlnet, identity_dir,
                                                                               tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from pedit.data.sd_models import IdentityTerms

    class FakeWords:  # the seam for the paper's ELITE encoder: a face → K word embeddings
        name = "fake-elite"

        def __init__(self, parts):
            assert parts.pipe is None  # no IP-Adapter loaded when another encoder is given

        def encode(self, face_rgb):
            return IdentityTerms(tokens=torch.full((1, 2, 32), float(face_rgb.mean()) / 255 + 1))

    contexts = []
    real_forward = UNet2DConditionModel.forward

    def seeing(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        contexts.append(encoder_hidden_states)
        return real_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", seeing)
    from pedit.data.sd_pairs import generate_sd_pairs
    from pedit.edit.sampler import make_scheduler, sample

    out = generate_sd_pairs(_cfg(tmp_path / "p", tiny_base, tiny_controlnet, n=1, identity_dir=str(identity_dir)),
                            sample, make_scheduler, identity_encoder=FakeWords, read_photo=_read_photo)
    ctx = contexts[0]  # (4, 77 + 2, 32): rows uncond, p, p_a, p_b
    assert ctx.shape == (4, 79, 32)
    assert torch.count_nonzero(ctx[0, 77:]) == 0 and bool((ctx[1:, 77:] > 1).all())
    assert _rows(out)[0]["identity"]["encoder"] == "fake-elite"


def test_rerun_skips_finished_pairs_and_redoes_only_the_lost_one(tiny_base, tiny_controlnet, tmp_path):
    out = tmp_path / "pairs"
    cfg = _cfg(out, tiny_base, tiny_controlnet, n=3)
    _run(cfg)
    before = _image_bytes(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    events = []
    _run(cfg, events)
    assert events[-1] == (3, 3, 0)  # nothing generated
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")} == stamps  # nothing rewritten
    # An interruption after pair 2's images, before its row: the rerun makes exactly that pair, the same.
    meta = out / "metadata.jsonl"
    meta.write_text("".join(meta.read_text().splitlines(keepends=True)[:2]))
    events = []
    _run(cfg, events)
    assert events[-1] == (3, 3, 1)
    assert _image_bytes(out) == before


def test_two_shards_and_a_rerun_give_exactly_the_full_set(tiny_base, tiny_controlnet, tmp_path):
    out = tmp_path / "sharded"
    for i in (0, 1):
        _run(_cfg(out, tiny_base, tiny_controlnet, n=5, shard=(i, 2)))
    events = []
    _run(_cfg(out, tiny_base, tiny_controlnet, n=5), events)
    assert events[-1] == (5, 5, 0)
    ids = [r["id"] for r in _rows(out)]
    assert sorted(ids) == [f"{i:06d}" for i in range(5)] and len(ids) == len(set(ids))
    whole = _run(_cfg(tmp_path / "whole", tiny_base, tiny_controlnet, n=5))
    assert _image_bytes(out) == _image_bytes(whole)  # a pair depends on its index only


def test_a_folder_refuses_other_settings(tiny_base, tiny_controlnet, tmp_path):
    out = tmp_path / "pairs"
    _run(_cfg(out, tiny_base, tiny_controlnet, n=1))
    with pytest.raises(ConfigError, match=r"other settings \(s_b differ\)"):
        _run(_cfg(out, tiny_base, tiny_controlnet, n=1, s_b=0.5))


def test_min_score_rejects_and_remembers(tiny_base, tiny_controlnet, tmp_path):
    out = tmp_path / "pairs"
    cfg = _cfg(out, tiny_base, tiny_controlnet, n=2, min_score=1.0)  # only identical halves pass
    _run(cfg)
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == ["000000", "000001"] and "layout" in rejected[0]["why"]
    assert not (out / "metadata.jsonl").exists() or _rows(out) == []
    events = []
    _run(cfg, events)
    assert events[-1] == (2, 2, 0)  # rejected pairs are not generated again


# ---------------------------------------------------------------------------------------------
# Bad inputs through the CLI: one Error line each, nothing written


def _cli(*args):
    from pedit.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def _assert_error(result, text, out: Path):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "metadata.jsonl").exists()


def test_cli_refuses_a_base_that_is_not_stable_diffusion(random_model, tmp_path):
    out = tmp_path / "p"
    _assert_error(_cli("gen-pairs", "--source", "sd", "--base", random_model, "-o", out, "-n", 1, "--no-pose", "-q"),
                  "is not a Stable Diffusion base folder", out)


def test_cli_refuses_a_controlnet_of_another_width(tiny_base, tmp_path):
    from diffusers import ControlNetModel

    cnet = ControlNetModel(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           cross_attention_dim=48, attention_head_dim=2, norm_num_groups=4, layers_per_block=1,
                           conditioning_embedding_out_channels=(4, 4, 4, 4))
    cnet.save_pretrained(tmp_path / "cnet")
    out = tmp_path / "p"
    _assert_error(_cli("gen-pairs", "--source", "sd", "--base", tiny_base, "--controlnet", tmp_path / "cnet", "-o", out,
                       "-n", 1, "--resolution", 32, "-q"), "cross_attention_dim 48 vs the base's 32", out)


def test_cli_refuses_an_identity_folder_without_faces(tiny_base, tmp_path):
    ids = tmp_path / "ids"
    ids.mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(ids / "noise.png")
    out = tmp_path / "p"
    _assert_error(_cli("gen-pairs", "--source", "sd", "--base", tiny_base, "--no-pose", "--identity-dir", ids, "-o", out,
                       "-n", 1, "--resolution", 32, "-q"), "none of its 1 photo(s) shows a face", out)


def test_cli_refuses_a_malformed_keypoints_json(tiny_base, tiny_controlnet, tmp_path):
    bad = tmp_path / "pose.json"
    bad.write_text('{"people": [{"pose_keypoints_2d": [1, 2]}]}')
    out = tmp_path / "p"
    _assert_error(_cli("gen-pairs", "--source", "sd", "--base", tiny_base, "--controlnet", tiny_controlnet,
                       "--pose", bad, "-o", out, "-n", 1, "--resolution", 32, "-q"), "must be 54 numbers", out)


def test_cli_writes_sd_pairs_with_a_custom_direction(tiny_base, tiny_controlnet, tmp_path):
    toml = tmp_path / "dirs.toml"
    toml.write_text('[pirate]\ntask = "costume"\np_a = "a person, everyday clothes"\np_b = "a person, pirate costume"\n')
    out = tmp_path / "p"
    result = _cli("gen-pairs", "--source", "sd", "--base", tiny_base, "--controlnet", tiny_controlnet, "-o", out, "-n", 2,
                  "--resolution", 32, "--steps", 1, "--directions", "pirate,santa", "--directions-file", toml,
                  "--device", TEST_DEVICE, "-q")
    assert result.exit_code == 0, result.output
    assert [r["direction"] for r in _rows(out)] == ["pirate", "santa"]
    assert (out / "contact_sheet.png").exists()


def test_each_rank_under_accelerate_takes_its_own_shard(monkeypatch):
    from pedit.data.gen_pairs import shard_from_env

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shard_from_env() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert shard_from_env() == (2, 4)


@pytest.fixture(scope="module")
def tiny_clip(tiny_base, tmp_path_factory) -> Path:
    """A tiny CLIPModel (both towers) + processor, on the tiny base's tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_base / "tokenizer")
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16))
    out = tmp_path_factory.mktemp("clip") / "clip"
    model.save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(out)
    return out


def test_clip_direction_flips_sign_when_the_halves_swap(tiny_clip):
    from pedit.data.pair_scores import ClipDirection

    rng = np.random.default_rng(0)
    a, b = ((rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(2))
    score = ClipDirection(str(tiny_clip))
    forward = score(a, b, "a person, everyday clothes", "a person, santa claus costume")
    assert -1 <= forward <= 1 and abs(forward) > 1e-4
    assert score(b, a, "a person, everyday clothes", "a person, santa claus costume") == pytest.approx(-forward, abs=1e-5)


def test_min_clip_filters_on_the_recorded_clip_score(tiny_base, tiny_controlnet, tiny_clip, tmp_path):
    kept = _run(_cfg(tmp_path / "kept", tiny_base, tiny_controlnet, n=2, clip=str(tiny_clip)))
    scores = [r["scores"]["clip_direction"] for r in _rows(kept)]
    assert all(isinstance(s, float) for s in scores)
    out = _run(_cfg(tmp_path / "filtered", tiny_base, tiny_controlnet, n=2, clip=str(tiny_clip), min_clip=max(scores)))
    rejected = {json.loads(line)["id"] for line in (out / "rejected.jsonl").read_text().splitlines()} \
        if (out / "rejected.jsonl").exists() else set()
    expected = {f"{i:06d}" for i, s in enumerate(scores) if s < max(scores)}
    assert rejected == expected and len(_rows(out)) == 2 - len(expected)


# ---------------------------------------------------------------------------------------------
# Review findings: refused runs write nothing, prompts reach their rows, inputs are fingerprinted


def test_steps_beyond_the_schedule_are_refused_before_anything_is_written(tiny_base, tiny_controlnet, tmp_path):
    out = tmp_path / "p"
    args = ("gen-pairs", "--source", "sd", "--base", tiny_base, "--controlnet", tiny_controlnet, "-o", out, "-n", 1,
            "--resolution", 32, "--device", TEST_DEVICE, "-q")
    result = _cli(*args, "--steps", 5000)
    _assert_error(result, "steps must be between 1 and 1000", out)
    assert not out.exists() or list(out.iterdir()) == []  # no config.json locking the folder, no images/
    assert _cli(*args, "--steps", 1).exit_code == 0  # so the corrected rerun is not "other settings"
    assert len(_rows(out)) == 1


def test_a_negative_seed_is_a_clear_error(tiny_base, tmp_path):
    out = tmp_path / "p"
    _assert_error(_cli("gen-pairs", "--source", "sd", "--base", tiny_base, "--no-pose", "-o", out, "-n", 1,
                       "--seed", -1, "-q"), "seed must be in [0, ", out)


def _spy_unet(monkeypatch):
    from diffusers import UNet2DConditionModel

    seen = []
    real_forward = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        seen.append(encoder_hidden_states.detach().clone())
        return real_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    return seen


def test_each_prompt_reaches_its_own_row_block(tiny_base, tiny_controlnet, tmp_path, monkeypatch):
    from transformers import CLIPTextModel, CLIPTokenizer

    seen = _spy_unet(monkeypatch)
    out = _run(_cfg(tmp_path / "p", tiny_base, tiny_controlnet, n=2, batch_size=2, steps=1))
    tokenizer = CLIPTokenizer.from_pretrained(tiny_base / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_base / "text_encoder")

    def encode(prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            return text_encoder(ids)[0]

    rows = _rows(out)
    assert rows[0]["p_a"] != rows[0]["p_b"]
    blocks = seen[0].chunk(4)  # (4B, 77, D) → uncond, p, p_a, p_b; B = 2 pairs each
    expected = [[""] * 2, [r["p"] for r in rows], [r["p_a"] for r in rows], [r["p_b"] for r in rows]]
    for block, prompts in zip(blocks, expected):
        torch.testing.assert_close(block, encode(prompts), rtol=1e-4, atol=1e-5)


def test_s_b_changes_only_the_right_half_of_the_first_step(tiny_base, tiny_controlnet, tmp_path):
    """Eq. 2: s'_b multiplies M'_b only, so at step 1 (one z_T, one U-Net output for both runs)
    the guided noise of the left half is identical and the right half's differs. Later steps
    see a latent whose right half moved, and the U-Net's convolutions and attention mix the
    halves, so x_A may change too (it is not asserted equal); x_B must change."""
    from pedit.data.sd_pairs import generate_sd_pairs
    from pedit.edit.sampler import make_scheduler, sample

    def run(s_b, name):
        first = []

        def recording(denoise, scheduler, z, c, context, guide, steps, **kw):
            def rec(eps):
                out = guide(eps)
                first.append(out) if not first else None
                return out
            return sample(denoise, scheduler, z, c, context, rec, steps, **kw)

        out = generate_sd_pairs(_cfg(tmp_path / name, tiny_base, tiny_controlnet, n=1, s_b=s_b),
                                recording, make_scheduler)
        return first[0], out

    eps_hi, out_hi = run(0.7, "hi")
    eps_lo, out_lo = run(0.2, "lo")
    w = eps_hi.shape[-1] // 2
    assert torch.equal(eps_hi[..., :w], eps_lo[..., :w])
    assert not torch.allclose(eps_hi[..., w:], eps_lo[..., w:])
    b_hi, b_lo = (_image_bytes(o)["000000_x_B.png"] for o in (out_hi, out_lo))
    assert b_hi != b_lo


def test_a_changed_directions_file_is_other_settings(tiny_base, tiny_controlnet, tmp_path):
    toml = tmp_path / "dirs.toml"
    toml.write_text('[pirate]\np_a = "a person, everyday clothes"\np_b = "a person, pirate costume"\n')
    out = tmp_path / "p"
    _run(_cfg(out, tiny_base, tiny_controlnet, n=1, steps=1, directions=("pirate",), directions_file=str(toml)))
    assert _rows(out)[0]["p_b"].endswith("pirate costume")
    toml.write_text('[pirate]\np_a = "a person, everyday clothes"\np_b = "a person, parrot costume"\n')
    with pytest.raises(ConfigError, match=r"other settings \(input_files differ\)"):
        _run(_cfg(out, tiny_base, tiny_controlnet, n=1, steps=1, directions=("pirate",), directions_file=str(toml)))


def test_a_changed_identity_folder_is_other_settings(tiny_base, tiny_controlnet, tiny_ip_adapter, identity_dir,
                                                     tmp_path):
    import shutil

    ids = tmp_path / "ids"
    shutil.copytree(identity_dir, ids)
    out = tmp_path / "p"
    ip = (str(tiny_ip_adapter), "models", "ip-face.safetensors", "image_encoder")
    _run(_cfg(out, tiny_base, tiny_controlnet, n=1, steps=1, identity_dir=str(ids), ip_adapter=ip))
    (ids / "astronaut-mirror.png").unlink()
    with pytest.raises(ConfigError, match=r"input_files differ"):
        _run(_cfg(out, tiny_base, tiny_controlnet, n=1, steps=1, identity_dir=str(ids), ip_adapter=ip))


def test_max_identity_distance_rejects_pairs_without_a_same_person(tiny_base, tiny_controlnet, tmp_path):
    from pedit import faces

    if not faces.face_model_available():
        pytest.skip("needs the face model (dlib + face_recognition_models)")
    out = tmp_path / "p"
    result = _cli("gen-pairs", "--source", "sd", "--base", tiny_base, "--controlnet", tiny_controlnet, "-o", out,
                  "-n", 2, "--resolution", 32, "--steps", 1, "--device", TEST_DEVICE, "--max-identity-distance", 0.6, "-q")
    assert result.exit_code == 0, result.output
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    # A random tiny model draws no faces: nothing can be shown to be the same person.
    assert [r["id"] for r in rejected] == ["000000", "000001"]
    assert all("no face found" in r["why"] and r["scores"]["identity_distance"] is None for r in rejected)
    assert not (out / "metadata.jsonl").exists() or _rows(out) == []


# ---------------------------------------------------------------------------------------------
# Decoding (issue 17, item 7): fp16 overflow is decoded again in fp32; a NaN or flat canvas is no pair


class _FakeVAE:
    """decode gives NaN in reduced precision and a gradient in fp32, as an overflowing SD VAE."""

    def __init__(self, dtype):
        from types import SimpleNamespace

        self.dtype, self.config, self.calls = dtype, SimpleNamespace(scaling_factor=0.5), []

    def decode(self, z):
        from types import SimpleNamespace

        self.calls.append(z.dtype)
        x = torch.linspace(-2, 2, z.numel()).view_as(z).to(z.dtype)
        return SimpleNamespace(sample=x * float("nan") if z.dtype != torch.float32 else x)


def test_decode_latents_decodes_an_overflowing_fp16_batch_again_in_fp32():
    from pedit.vae import decode_latents

    half, full = _FakeVAE(torch.float16), _FakeVAE(torch.float32)
    z = torch.ones(1, 4, 2, 2)
    x = decode_latents(half, z, lambda: full)
    assert half.calls == [torch.float16] and full.calls == [torch.float32]
    assert x.dtype == torch.float16 and torch.isfinite(x).all() and x.min() == -1 and x.max() == 1  # clamped
    fp32_only = _FakeVAE(torch.float32)
    decode_latents(fp32_only, z, lambda: pytest.fail("an fp32 decode needs no second pass"))
    assert fp32_only.calls == [torch.float32]


@pytest.mark.parametrize("fill, why", [(float("nan"), "non-finite decode"), (-1.0, "flat canvas: x_A"),
                                       (0.3, "flat canvas: x_A")])
def test_a_nan_or_flat_canvas_is_never_a_pair(tiny_base, tiny_controlnet, tmp_path, monkeypatch, fill, why):
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    def broken(self, z, *args, **kwargs):  # (B, 4, h, 2w) → (B, 3, H, 2W) of one value
        f = 2 ** (len(self.config.block_out_channels) - 1)
        return SimpleNamespace(sample=torch.full((z.shape[0], 3, z.shape[2] * f, z.shape[3] * f), fill))

    monkeypatch.setattr(AutoencoderKL, "decode", broken)
    out = tmp_path / "pairs"
    _run(_cfg(out, tiny_base, tiny_controlnet, n=2))  # no --min-score: the layout score would pass them anyway
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == ["000000", "000001"] and all(why in r["why"] for r in rejected)
    assert not (out / "metadata.jsonl").exists() or _rows(out) == []
    assert not list(out.glob("images/*.png"))  # no half of a broken canvas is kept


def test_canvas_problem_passes_a_real_picture():
    from skimage.data import astronaut

    from pedit.data.pair_scores import canvas_problem

    face = np.ascontiguousarray(astronaut()[:64, :64])
    assert canvas_problem(face, face) is None
    flat = np.full_like(face, 7)
    assert canvas_problem(face, flat).startswith("flat canvas: x_B")
    assert canvas_problem(face, face, finite=False).startswith("non-finite")


# ---------------------------------------------------------------------------------------------
# --nested-identity (issue 17, item 9): paper Eq. 1's nesting, one more row per pair


def test_nested_identity_is_eq1_by_hand_and_reduces_to_one_cfg_when_s_id_equals_s():
    g = torch.Generator().manual_seed(1)
    e_0, e_id, e_p, e_pa, e_pb = (torch.randn(2, 4, 3, 6, generator=g) for _ in range(5))
    st = PairStrengths(s_d=0.3, s_a=0.5, s_b=0.9, cfg=4.0)
    rows = torch.cat([e_0, e_id, e_p, e_pa, e_pb])
    got = pair_eps(rows, st, identity_guidance=1.5)
    nested = [e_0 + 1.5 * (e_id - e_0) + 4.0 * (e - e_id) for e in (e_p, e_pa, e_pb)]
    m_a, m_b = side_masks(6)
    torch.testing.assert_close(got, 0.3 * nested[0] + 0.5 * m_a * nested[1] + 0.9 * m_b * nested[2])
    # s_id = s: e(∅, id) cancels, the single CFG over text and identity together
    torch.testing.assert_close(pair_eps(rows, st, identity_guidance=4.0), pair_eps(torch.cat([e_0, e_p, e_pa, e_pb]), st))


def test_nested_identity_adds_the_empty_prompt_identity_row(tiny_base, tiny_controlnet, tiny_ip_adapter, identity_dir,
                                                             tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    seen = []
    real_forward = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states=None, *args, added_cond_kwargs=None, **kwargs):
        seen.append((sample.shape[0], encoder_hidden_states.clone(), added_cond_kwargs["image_embeds"][0].clone()))
        return real_forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=added_cond_kwargs,
                            **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    ip = (str(tiny_ip_adapter), "models", "ip-face.safetensors", "image_encoder")
    common = dict(n=1, steps=1, identity_dir=str(identity_dir), ip_adapter=ip)
    single = _image_bytes(_run(_cfg(tmp_path / "single", tiny_base, tiny_controlnet, **common)))
    rows4, ctx4, ids4 = seen[-1]
    nested = _image_bytes(_run(_cfg(tmp_path / "nested", tiny_base, tiny_controlnet, identity_guidance=2.0, **common)))
    rows5, ctx5, ids5 = seen[-1]
    assert (rows4, rows5) == (4, 5)
    torch.testing.assert_close(ctx5[1], ctx5[0])  # block 1: the empty prompt ...
    torch.testing.assert_close(ids5[1], ids5[2])  # ... with the pair's identity, not the null one
    assert not torch.equal(ids5[1], ids5[0])
    torch.testing.assert_close(ctx5[2:], ctx4[1:])
    assert nested["000000_x_B.png"] != single["000000_x_B.png"]
