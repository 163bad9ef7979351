"""--resume only over the pair folder the run started on (issue 19, item 5): the run records its
data's fingerprint in config.json and a resume over changed pairs, or without a record, is refused."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pedit.errors import ConfigError
from pedit.train.loop import TrainConfig, train


def _cfg(pairs, out, base, **kw):
    return TrainConfig(**{**dict(data=str(pairs), output=str(out), base=str(base), batch_size=2, checkpoint_every=1,
                                 validate_every=0, max_steps=1, cache_dir=str(out.parent / "cache")), **kw})


def test_resume_over_a_changed_pair_image_is_refused_and_the_run_is_kept(tiny_pairs, tiny_base, tmp_path):
    pairs = shutil.copytree(tiny_pairs, tmp_path / "pairs")
    out = tmp_path / "run"
    train(_cfg(pairs, out, tiny_base))
    before = sorted(p.name for p in out.iterdir())
    row = json.loads((pairs / "metadata.jsonl").read_text().splitlines()[0])
    x_B = pairs / row["x_B"]
    Image.fromarray(255 - np.asarray(Image.open(x_B))).save(x_B)  # same name and size, other pixels
    with pytest.raises(ConfigError, match="changed since the run in .* began"):
        train(_cfg(pairs, out, tiny_base, max_steps=2, resume=True))
    assert sorted(p.name for p in out.iterdir()) == before
    assert not (out / "checkpoints" / "step-000002").exists()


def test_resume_over_the_same_pairs_still_works_and_a_run_without_a_record_is_refused(tiny_pairs, tiny_base, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_pairs, out, tiny_base))
    train(_cfg(tiny_pairs, out, tiny_base, max_steps=2, resume=True))
    assert (out / "checkpoints" / "step-000002").exists()
    saved = json.loads((out / "config.json").read_text())
    del saved["data_fingerprint"]  # as an older pedit wrote it
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="did not record a fingerprint"):
        train(_cfg(tiny_pairs, out, tiny_base, max_steps=3, resume=True))
