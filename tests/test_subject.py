"""Issue 17, item 2: a model trained on pairs with varied subjects records each direction's template
prompts ("a person, ..."), not one pair's subject; `--subject` / `subject=` fills "person" in."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from pedit.cli import cli
from pedit.data.directions import BUILTIN, with_subject
from pedit.edit.editor import Editor
from pedit.errors import DirectionError
from pedit.train.loop import TrainConfig, train

SUBJECTS = ("old man", "woman", "young man", "girl")
SANTA = BUILTIN["santa"]


def _varied_subjects(tiny_pairs, folder, template: bool):
    """tiny_pairs' images, every pair made 'santa' for its own subject, as gen-pairs --source sd writes
    them (template=True) or wrote them before rows carried the template (subject only)."""
    shutil.copytree(tiny_pairs, folder)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        subject = SUBJECTS[i % len(SUBJECTS)]
        row.update(direction="santa", task="costume", subject=subject,
                   **{k: with_subject(getattr(SANTA, k), subject) for k in ("p", "p_a", "p_b")})
        if template:
            row["template"] = {"p": SANTA.p, "p_a": SANTA.p_a, "p_b": SANTA.p_b}
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def subject_model(tiny_pairs, tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("subject")
    pairs = _varied_subjects(tiny_pairs, root / "pairs", template=True)
    return train(TrainConfig(data=str(pairs), output=str(root / "model"), base=str(tiny_base), batch_size=2,
                             max_steps=2, checkpoint_every=2, validate_every=0, cache_dir=str(root / "cache")))


def test_the_model_folder_records_the_template_not_the_first_pairs_subject(subject_model):
    meta = json.loads((subject_model / "pedit.json").read_text())
    (santa,) = meta["directions"]
    assert santa == {"name": "santa", "task": "costume", "p_a": "a person, everyday clothes",
                     "p_b": "a person, santa claus costume", "p": "the same person on the left and right"}


def test_an_older_folder_without_templates_gives_the_same_directions(tiny_pairs, tmp_path):
    from pedit.data.pairs import direction_of, read_pairs

    with_t = read_pairs(_varied_subjects(tiny_pairs, tmp_path / "new", template=True))
    without = read_pairs(_varied_subjects(tiny_pairs, tmp_path / "old", template=False))
    assert without[0].p_b == "an old man, santa claus costume"  # what the pair itself was made with
    assert [direction_of(p) for p in without] == [direction_of(p) for p in with_t] == [vars(SANTA)] * len(with_t)


def _seen_prompts(monkeypatch) -> list[str]:
    seen = []
    original = Editor._prompt

    def spy(self, text):
        seen.append(text)
        return original(self, text)

    monkeypatch.setattr(Editor, "_prompt", spy)
    return seen


def test_subject_changes_what_the_text_encoder_sees(subject_model, monkeypatch, portrait):
    editor = Editor.from_pretrained(subject_model, device="cpu")
    seen = _seen_prompts(monkeypatch)
    fast = dict(steps=2, use_mask=False)
    plain = editor.edit(portrait, "santa", **fast)
    assert seen == ["a person, santa claus costume", "a person, everyday clothes", ""]
    seen.clear()
    old = editor.edit(portrait, "santa", subject="old man", **fast)
    assert seen == ["an old man, santa claus costume", "an old man, everyday clothes", ""]
    assert plain.raw.tobytes() != old.raw.tobytes()  # the prompt reached the U-Net
    with pytest.raises(DirectionError, match="subject must be one to four words"):
        editor.edit(portrait, "santa", subject="a, santa; <b>", **fast)


def test_edit_subject_flag_reaches_the_prompts(subject_model, monkeypatch, tmp_path, portrait):
    portrait.save(tmp_path / "in.png")
    seen = _seen_prompts(monkeypatch)
    args = ["edit", str(tmp_path / "in.png"), "-d", "santa", "-m", str(subject_model), "--steps", "2", "--no-mask",
            "--device", "cpu", "--no-identity-check", "--no-cache", "-q"]
    result = CliRunner().invoke(cli, [*args, "--subject", "woman", "-o", str(tmp_path / "woman.png")])
    assert result.exit_code == 0, result.output
    assert "a woman, santa claus costume" in seen and "a person, santa claus costume" not in seen
    assert Image.open(tmp_path / "woman.png").size == portrait.size
    bad = CliRunner().invoke(cli, [*args, "--subject", "", "-o", str(tmp_path / "bad.png")])
    assert bad.exit_code == 1 and "Error: subject must be one to four words" in bad.output
    assert not (tmp_path / "bad.png").exists()
