"""Model cards (README.md in every model folder), read back with huggingface_hub as the Hub reads them."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import ModelCard

from pedit.cli import cli
from pedit.model.card import RESULTS_END, RESULTS_START, render_card, update_results
from pedit.model.loading import model_path
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
REPORTS = {use_as: report for _, use_as, report in load_script("write_bundled_cards").BUNDLED}  # the cards' reports


def _report(psnr: float = 21.5) -> dict:
    ours = {"pairs": 3, "ssim": 0.81, "psnr": psnr, "psnr_in_mask": 12.25, "psnr_outside_mask": 30.5,
            "mask_iou": 0.4, "changed_pixels_iou": 0.45, "lpips": "n/a"}
    return {"config": {"pairs": "/x/eval-pairs", "seed": 0, "device": "cpu", "precision": "fp32"}, "pairs": 3,
            "sampling": {"ours": {"scheduler": "ddim", "steps": 4, "guidance_interval": [0.2, 0.8]}},
            "methods": {"ours": ours}}


def _metrics(card) -> dict:
    return {r.metric_name: r.metric_value for r in card.data.eval_results}


def _check_card(card, meta: dict) -> None:
    assert card.data.library_name == "pedit" and card.data.pipeline_tag == "image-to-image"
    assert "pedit" in card.data.tags and "mcdm" in card.data.tags
    assert ("guidance-distillation" in card.data.tags) == ("distilled" in meta)
    for d in meta["directions"]:  # every direction with its prompts
        assert f"| `{d['name']}` | {d['task']} | {d['p_a']} | {d['p_b']} |" in card.text
    assert "## Training" in card.text and "## How to use" in card.text and "Editor.from_pretrained" in card.text


@pytest.mark.parametrize("name", ["toon", "toon-fast"])
def test_the_bundled_models_cards_load_with_huggingface_hub(name):
    folder = model_path(name)
    card = ModelCard.load(folder / "README.md")
    meta = json.loads((folder / "pedit.json").read_text())
    _check_card(card, meta)
    assert f"-m {name} " in card.text
    assert card.data.base_model is None  # the toon base is a local folder, not a Hub id
    ours = json.loads((ROOT / REPORTS[name]).read_text())["methods"]["ours"]
    got = _metrics(card)  # the held-out report's numbers, not typed in
    assert got["PSNR"] == round(ours["psnr"], 4) and got["mask IoU"] == round(ours["mask_iou"], 4)
    assert f"| PSNR outside the true edit mask (preservation) | {ours['psnr_outside_mask']:.3f} |" in card.text


def test_a_card_names_a_hub_base_and_its_license(tmp_path):
    meta = {"base": "runwayml/stable-diffusion-v1-5", "init": "base", "resolution": 512,
            "directions": [{"name": "royal", "task": "costume", "p_a": "a person", "p_b": "a person, royal costume"}],
            "steps_trained": 10, "training": {"data": "pairs/", "batch_size": 4, "gradient_accumulation": 2,
                                              "learning_rate": 1e-4, "identity_prob": 0.05, "drop_prob": 0.2}}
    (tmp_path / "README.md").write_text(render_card("my-model", meta))
    card = ModelCard.load(tmp_path / "README.md")
    _check_card(card, meta)
    assert card.data.base_model == "runwayml/stable-diffusion-v1-5" and card.data.license == "creativeml-openrail-m"
    assert "10 optimizer steps at batch 4 × accumulation 2, 80 samples" in card.text
    assert "Not evaluated yet" in card.text and card.data.eval_results is None
    local = {**meta, "base": str(tmp_path)}  # an existing folder is never taken for a Hub id
    assert ModelCard(render_card("m", local)).data.base_model is None


def test_train_writes_a_card_into_the_model_folder(random_model):
    card = ModelCard.load(random_model / "README.md")  # the fixture's folder comes from save_model
    _check_card(card, json.loads((random_model / "pedit.json").read_text()))
    assert "# random-model" in card.text and "-m random-model" in card.text


def test_update_card_keeps_the_users_prose_and_metadata(random_model, tmp_path):
    meta = json.loads((random_model / "pedit.json").read_text())
    first = render_card("m", meta)
    head, body = first.split("---\n", 2)[1:]
    edited = ("---\n" + head + "language: en\n---\n"  # a metadata key of the user's
              + "My own introduction.\n\n" + body.replace("## Training", "Trained for my shop.\n\n## Training")
              + "\n## Limitations\n\nMy own closing words.\n")
    once = update_results("m", edited, _report(21.5))
    twice = update_results("m", once, _report(22.75))
    for text in (once, twice):
        for prose in ("My own introduction.", "Trained for my shop.", "## Limitations\n\nMy own closing words."):
            assert prose in text
        assert text.count(RESULTS_START) == 1 and text.count(RESULTS_END) == 1
        assert "Not evaluated yet" not in text
    card = ModelCard(twice)
    assert card.data.language == "en" and card.data.library_name == "pedit"
    assert _metrics(card)["PSNR"] == 22.75 and "| PSNR | 22.750 |" in twice and "21.500" not in twice
    # Saving new weights renews pedit's block and clears the results; the prose stays.
    resaved = render_card("m", {**meta, "steps_trained": 7, "training": {"batch_size": 1}}, twice)
    assert "My own closing words." in resaved and "My own introduction." in resaved
    assert "Not evaluated yet" in resaved and ModelCard(resaved).data.eval_results is None
    assert "7 optimizer steps" in resaved and "Trained for my shop." not in resaved  # inside pedit's block


def test_eval_update_card_writes_the_results_and_keeps_prose(random_model, tmp_path):
    import shutil

    from pedit.data.gen_pairs import GenPairsConfig, generate_pairs

    pairs = generate_pairs(GenPairsConfig(str(tmp_path / "pairs"), n=2, resolution=32, seed=1_000_000, exact=True))
    folder = Path(shutil.copytree(random_model, tmp_path / "model"))
    card_file = folder / "README.md"
    card_file.write_text(card_file.read_text() + "\nNotes of mine.\n")
    result = CliRunner().invoke(cli, ["eval", "-m", str(folder), "--pairs", str(pairs), "--methods", "ours",
                                      "--steps", "2", "--grid", "0", "--update-card", "-q"])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(card_file)
    assert "Notes of mine." in card.text and "## Measured fidelity" in card.text
    assert "2 steps" in card.text and "seed 0," in card.text  # the sampling settings the eval ran with
    assert card.data.eval_results and card.data.eval_results[0].dataset_name == "pairs"


def test_update_card_bad_input_is_one_error_line_before_the_work(random_model, tmp_path):
    import shutil

    folder = Path(shutil.copytree(random_model, tmp_path / "model"))
    result = CliRunner().invoke(cli, ["eval", "-m", str(folder), "--pairs", str(tmp_path), "--methods", "diffedit",
                                      "--update-card"])
    assert result.exit_code == 2 and "include ours in --methods" in result.output
    (folder / "README.md").write_bytes(b"caf\xe9 \xff")
    result = CliRunner().invoke(cli, ["eval", "-m", str(folder), "--pairs", str(tmp_path / "none"), "--update-card"])
    assert result.exit_code == 1 and result.output.strip() == f"Error: {folder / 'README.md'} is not UTF-8 text; " \
                                                               "a model card is Markdown."
    result = CliRunner().invoke(cli, ["eval", "--photos", str(tmp_path), "-d", "royal", "--update-card"])
    assert result.exit_code == 2 and "--update-card goes with --pairs" in result.output


def test_distill_writes_a_students_card(tiny_pairs, random_model, tmp_path):
    from pedit.train.distill import DistillConfig, distill

    out = distill(DistillConfig(data=str(tiny_pairs), output=str(tmp_path / "student"), teacher=str(random_model),
                                batch_size=2, max_steps=1, validate_every=0, cache_dir=str(tmp_path / "cache")))
    card = ModelCard.load(out / "README.md")
    _check_card(card, json.loads((out / "pedit.json").read_text()))
    assert f"**Guidance-distilled student** of `{random_model}`" in card.text
