"""The toon world is the project's ground truth: its pairs must be deterministic, their masks exact,
and each of the 8 directions visibly distinct (a small MCDM has to learn them at 128 px)."""

import dataclasses
import json

import numpy as np
import pytest

from pedit.toon import world as toon
from pedit.data.directions import BUILTIN

SEEDS = [0, 1, 2, 3, 7, 11]


def _regions(seed, size=128):
    """Bands of the face box: the eye line, the mouth, the middle features, above and below the face."""
    x0, y0, x1, y1 = toon.face_box(seed, size)
    w, h = x1 - x0, y1 - y0
    cols = slice(x0, x1 + 1)
    return {
        "eyes": (slice(y0 + int(0.35 * h), y0 + int(0.62 * h)), cols),
        "mouth": (slice(y0 + int(0.68 * h), y0 + int(0.95 * h)), cols),
        "face": (slice(y0, y1 + 1), cols),
        # eyes, nose and mouth of the neutral face: a costume must leave these pixels alone
        "features": (slice(y0 + int(0.4 * h), y0 + int(0.8 * h) + 1), slice(x0 + int(0.2 * w), x0 + int(0.8 * w) + 1)),
        "head_top": (slice(0, y0 + int(0.3 * h)), slice(None)),
        "below_face": (slice(y1 + 1, None), slice(None)),
    }


def _count(img, lo, hi):
    """Pixels whose RGB lies in the box [lo, hi] channel-wise."""
    return int(np.all((img >= np.array(lo)) & (img <= np.array(hi)), axis=-1).sum())


def _white(img):
    return int((img.min(-1) > 235).sum())


# ------------------------------------------------------------------------------------------- the API


def test_directions_match_builtin_directions():
    assert set(toon.DIRECTIONS) == set(BUILTIN)
    assert toon.DIRECTIONS == toon.COSTUMES[1:] + toon.EXPRESSIONS[1:]
    for name in toon.DIRECTIONS:
        assert BUILTIN[name].task == ("costume" if name in toon.COSTUMES else "expression")


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_render_sizes(size):
    img = toon.render(0, "laughing", "santa", size=size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    x0, y0, x1, y1 = toon.face_box(0, size)
    assert 0 <= x0 < x1 < size and 0 <= y0 < y1 < size


def test_default_size_is_128():
    assert toon.render(3).shape == (128, 128, 3)
    assert toon.make_pair(3, "royal").x_A.shape == (128, 128, 3)


def test_bad_arguments_raise_value_errors_naming_the_valid_values():
    with pytest.raises(ValueError, match="neutral, angry"):
        toon.render(0, expression="sad")
    with pytest.raises(ValueError, match="everyday, flower"):
        toon.render(0, costume="pirate")
    with pytest.raises(ValueError, match="at least 32"):
        toon.render(0, size=16)
    for bad in ("pirate", "neutral", "everyday"):
        with pytest.raises(ValueError, match="flower, sheep, santa, royal, angry, shocked, laughing, crying"):
            toon.make_pair(0, bad)


# ------------------------------------------------------------------------------ identities, determinism


def test_rendering_is_deterministic():
    assert toon.sample_identity(5) == toon.sample_identity(5)
    for expression, costume in [("neutral", "everyday"), ("crying", "everyday"), ("neutral", "flower")]:
        a, b = toon.render(5, expression, costume), toon.render(5, expression, costume)
        assert a.tobytes() == b.tobytes()
    imp = toon.Imperfection(1, -2, 1.04, (3, -2, 5))
    p, q = toon.make_pair(9, "sheep", imperfection=imp), toon.make_pair(9, "sheep", imperfection=imp)
    for field in ("x_A", "x_B", "x_B_exact", "mask"):
        assert getattr(p, field).tobytes() == getattr(q, field).tobytes()


def test_render_accepts_a_seed_or_an_identity():
    assert np.array_equal(toon.render(4, "angry"), toon.render(toon.sample_identity(4), "angry"))
    assert toon.face_box(4) == toon.face_box(toon.sample_identity(4))


def test_demo_input_is_a_held_out_toon_identity():
    """examples/toon.png is what the README's demo picture compares against the world's own edit
    (scripts/demo_figure.py): it must stay toon identity 1,000,007 (held out: training used 0-23,999)."""
    from pathlib import Path

    from PIL import Image

    demo = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "examples" / "toon.png").convert("RGB"))
    assert np.array_equal(demo, toon.render(1000007))
    assert not np.array_equal(demo, toon.render(1000008))


def test_identity_fields_are_valid():
    for seed in range(50):
        idn = toon.sample_identity(seed)
        assert idn.seed == seed
        assert idn.face_shape in toon.FACE_SHAPES and idn.hair_style in toon.HAIR_STYLES
        assert idn.glasses in toon.GLASSES and idn.clothing_pattern in toon.PATTERNS and idn.hat in toon.HATS
        colors = [idn.skin, idn.hair_color, idn.eye_color, idn.clothing_color, idn.pattern_color, *idn.background]
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)
        json.dumps(dataclasses.asdict(idn))  # identities can go into metadata as they are


def test_identity_seeds_give_visibly_different_portraits():
    seeds = range(20)
    imgs = [toon.render(s).astype(np.int16) for s in seeds]
    assert len({img.tobytes() for img in imgs}) >= 15
    # visibly different: every two portraits differ by a mean of several grey levels
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(20) for j in range(i + 1, 20)]
    assert min(diffs) > 3
    idns = [toon.sample_identity(s) for s in seeds]
    assert len({i.clothing_color for i in idns}) >= 15
    assert len({i.background for i in idns}) >= 15
    assert len({i.hair_style for i in idns}) >= 4 and len({i.face_shape for i in idns}) == 3
    assert len({i.skin for i in idns}) >= 4


# ------------------------------------------------------------------------------------ pairs and masks


@pytest.mark.parametrize("direction", toon.DIRECTIONS)
@pytest.mark.parametrize("seed", SEEDS)
def test_exact_pair_mask_is_the_edit(direction, seed):
    pair = toon.make_pair(seed, direction)
    assert pair.direction == direction and pair.identity_seed == seed and pair.imperfection.is_exact()
    assert np.array_equal(pair.x_A, toon.render(seed))
    assert np.array_equal(pair.x_B, pair.x_B_exact)
    assert pair.mask.shape == (128, 128) and pair.mask.dtype == bool
    assert 0.005 <= pair.mask.mean() <= 0.6
    # outside the mask the identity is untouched, inside every pixel changed
    assert np.array_equal(pair.x_A[~pair.mask], pair.x_B_exact[~pair.mask])
    assert np.all(np.any(pair.x_A[pair.mask] != pair.x_B_exact[pair.mask], axis=-1))

    ys, xs = np.nonzero(pair.mask)
    x0, y0, x1, y1 = toon.face_box(seed)
    r = _regions(seed)
    if direction in toon.EXPRESSIONS:  # the face changes, nothing else
        assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
    else:  # clothing and headwear change; eyes, nose and mouth stay
        assert not pair.mask[r["features"]].any()
        assert pair.mask[r["head_top"]].sum() > 50 and pair.mask[r["below_face"]].sum() > 200


@pytest.mark.parametrize("size", [64, 256])
def test_masks_follow_the_same_rules_at_other_sizes(size):
    for direction in toon.DIRECTIONS:
        pair = toon.make_pair(2, direction, size=size)
        assert pair.mask.shape == (size, size) and 0.005 <= pair.mask.mean() <= 0.6
        if direction in toon.EXPRESSIONS:
            ys, xs = np.nonzero(pair.mask)
            x0, y0, x1, y1 = toon.face_box(2, size)
            assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1


def test_costume_headwear_replaces_the_everyday_hat():
    seed = next(s for s in range(100) if toon.sample_identity(s).hat != "none")
    idn = toon.sample_identity(seed)
    bare = dataclasses.replace(idn, hat="none")
    assert not np.array_equal(toon.render(idn), toon.render(bare))  # the hat shows in everyday clothes
    for costume in toon.COSTUMES[1:]:
        assert np.array_equal(toon.render(idn, costume=costume), toon.render(bare, costume=costume))


# ----------------------------------------------------------------- each direction looks like itself


@pytest.mark.parametrize("seed", SEEDS)
def test_expressions_have_their_signatures(seed):
    r = _regions(seed)
    x_A = toon.render(seed)
    eyes_A, mouth_A = _white(x_A[r["eyes"]]), _white(x_A[r["mouth"]])
    angry, shocked = toon.render(seed, "angry"), toon.render(seed, "shocked")
    laughing, crying = toon.render(seed, "laughing"), toon.render(seed, "crying")
    assert _white(angry[r["eyes"]]) < 0.85 * eyes_A  # lids lowered under slanted brows
    assert _white(shocked[r["eyes"]]) > 1.5 * eyes_A  # wide-open eyes
    assert _white(laughing[r["eyes"]]) == 0  # eyes squeezed shut
    assert _white(laughing[r["mouth"]]) >= mouth_A + 10  # teeth in an open smile
    tears = ((110 - 40, 190 - 40, 215), (110 + 40, 190 + 40, 255))
    assert _count(crying[r["face"]], *tears) >= _count(x_A[r["face"]], *tears) + 40  # blue tears
    # the frown of the angry face and the open O of the shocked face both change the mouth
    assert not np.array_equal(angry[r["mouth"]], x_A[r["mouth"]])
    assert not np.array_equal(shocked[r["mouth"]], x_A[r["mouth"]])


@pytest.mark.parametrize("seed", SEEDS)
def test_costumes_have_their_signatures(seed):
    r = _regions(seed)
    x_A = toon.render(seed)
    gained = lambda img, region, lo, hi: _count(img[r[region]], lo, hi) - _count(x_A[r[region]], lo, hi)  # noqa: E731
    # headwear and trims are new in every identity; a coat may share the identity's own clothing colour
    red, white, gold, purple = ((185, 0, 0), (240, 60, 70)), ((235, 235, 225), (255, 255, 255)), \
        ((230, 170, 0), (255, 220, 80)), ((85, 15, 130), (125, 55, 190))
    santa, royal = toon.render(seed, costume="santa"), toon.render(seed, costume="royal")
    sheep, flower = toon.render(seed, costume="sheep"), toon.render(seed, costume="flower")
    assert gained(santa, "head_top", *red) > 150 and _count(santa[r["below_face"]], *red) > 800  # red hat, coat
    assert gained(santa, "head_top", *white) > 60 and gained(santa, "below_face", *white) > 150  # white trim
    assert gained(royal, "head_top", *gold) > 80  # gold crown
    assert _count(royal[r["below_face"]], *purple) > 800 and gained(royal, "below_face", *white) > 150  # robe, ermine
    assert gained(sheep, "head_top", *white) > 300 and gained(sheep, "below_face", *white) > 800  # woolly hood, top
    hues = {tuple(c) for c in (flower[r["head_top"]] // 64).reshape(-1, 3)} - {
        tuple(c) for c in (x_A[r["head_top"]] // 64).reshape(-1, 3)}
    assert len(hues) >= 4  # a many-coloured flower crown
    assert _count(flower[r["below_face"]], (100, 190, 90), (140, 220, 130)) > 400  # green floral top


def test_all_directions_differ_from_each_other():
    for seed in SEEDS[:3]:
        edits = [toon.make_pair(seed, d).x_B.astype(np.int16) for d in toon.DIRECTIONS]
        for i in range(len(edits)):
            for j in range(i + 1, len(edits)):
                assert np.abs(edits[i] - edits[j]).any(axis=-1).mean() > 0.01


def test_expression_and_costume_compose():
    both = toon.render(1, "laughing", "santa")
    assert not np.array_equal(both, toon.render(1, "laughing"))
    assert not np.array_equal(both, toon.render(1, costume="santa"))


# ------------------------------------------------------------------------------------- imperfections


def test_imperfection_defaults_and_serialisation():
    assert toon.Imperfection().is_exact()
    imp = toon.Imperfection(2, -1, 1.05, (4, -6, 0))
    assert not imp.is_exact()
    for changed in (dict(shift_x=1), dict(shift_y=-1), dict(face_width=0.97), dict(color_drift=(0, 0, 1))):
        assert not dataclasses.replace(toon.Imperfection(), **changed).is_exact()
    d = json.loads(json.dumps(imp.to_dict()))
    assert d == {"shift_x": 2, "shift_y": -1, "face_width": 1.05, "color_drift": [4, -6, 0]}
    assert toon.Imperfection.from_dict(d) == imp


def test_sample_imperfection_ranges_and_determinism():
    imps = [toon.sample_imperfection(np.random.default_rng(s)) for s in range(200)]
    assert all(abs(i.shift_x) <= 2 and abs(i.shift_y) <= 2 for i in imps)
    assert all(0.94 <= i.face_width <= 1.06 for i in imps)
    assert all(all(abs(c) <= 6 for c in i.color_drift) for i in imps)
    assert len({i.shift_x for i in imps}) == 5 and len({i.face_width for i in imps}) > 100
    assert toon.sample_imperfection(np.random.default_rng(3)) == toon.sample_imperfection(np.random.default_rng(3))
    exact = toon.sample_imperfection(np.random.default_rng(0), max_shift=0, max_face_width=0, max_color_drift=0)
    assert exact.is_exact()
    only_drift = toon.sample_imperfection(np.random.default_rng(0), max_shift=0, max_face_width=0)
    assert (only_drift.shift_x, only_drift.shift_y, only_drift.face_width) == (0, 0, 1.0)


@pytest.mark.parametrize("direction", ["royal", "laughing"])
def test_imperfect_pair_keeps_x_A_and_mask(direction):
    exact = toon.make_pair(6, direction)
    imp = toon.Imperfection(1, 2, 1.05, (5, -5, 3))
    pair = toon.make_pair(6, direction, imperfection=imp)
    assert pair.imperfection == imp
    assert np.array_equal(pair.x_A, exact.x_A)
    assert np.array_equal(pair.x_B_exact, exact.x_B_exact)
    assert np.array_equal(pair.mask, exact.mask)
    assert not np.array_equal(pair.x_B, pair.x_B_exact)


def test_each_imperfection_does_what_it_says():
    exact = toon.render(8, "crying")
    shifted = toon.render(8, "crying", imperfection=toon.Imperfection(shift_x=2, shift_y=-1))
    assert np.array_equal(shifted[:-1, 2:], exact[1:, :-2])  # content moved right 2, up 1
    drift = (6, -6, 3)
    drifted = toon.render(8, "crying", imperfection=toon.Imperfection(color_drift=drift))
    assert np.array_equal(drifted, np.clip(exact.astype(int) + drift, 0, 255).astype(np.uint8))
    wider = toon.render(8, "crying", imperfection=toon.Imperfection(face_width=1.06))
    changed = np.any(wider != exact, axis=-1)
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = toon.face_box(8)
    assert changed.any() and not changed[:, :x0 - 8].any() and not changed[:, x1 + 8:].any()
    assert xs.min() < x0 + 2 and xs.max() > x1 - 2  # the face's sides moved outwards
