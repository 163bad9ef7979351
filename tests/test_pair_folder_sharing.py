"""gen-pairs runs sharing a folder (issue 19, item 11): a row and its images come from one run, and
a setting that changes the images (precision) is one per folder."""

import json

import numpy as np
import pytest
from PIL import Image

from pedit.data.gen_pairs import claim_folder
from pedit.data.pairs import PairWriter
from pedit.data.sd_pairs import RUN_ONLY
from pedit.errors import ConfigError


def test_a_writer_that_lost_the_race_for_an_id_leaves_the_winners_images(tmp_path):
    first, second = PairWriter(tmp_path), PairWriter(tmp_path)  # both started before either wrote
    row = {"id": "000000", "direction": "royal", "p_a": "a", "p_b": "b", "seed": 0}
    mine = {"x_A": np.zeros((8, 8, 3), np.uint8), "x_B": np.zeros((8, 8, 3), np.uint8)}
    theirs = {"x_A": np.full((8, 8, 3), 255, np.uint8), "x_B": np.full((8, 8, 3), 255, np.uint8)}
    assert first.write({**row, "score": "of the black pair"}, mine)
    assert not second.write({**row, "score": "of the white pair"}, theirs)
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["score"] == "of the black pair"
    for field in ("x_A", "x_B"):  # the images its row was scored on, not the loser's
        assert np.asarray(Image.open(tmp_path / rows[0][field])).max() == 0


def test_a_folder_made_at_one_precision_refuses_another(tmp_path):
    settings = {"output": str(tmp_path), "precision": "fp32", "seed": 0}
    claim_folder(tmp_path, settings, RUN_ONLY)
    claim_folder(tmp_path, {**settings, "output": "elsewhere"}, RUN_ONLY)  # a run-only setting may differ
    with pytest.raises(ConfigError, match=r"other settings \(precision differ\)"):
        claim_folder(tmp_path, {**settings, "precision": "fp16"}, RUN_ONLY)
