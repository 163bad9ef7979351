"""The built-in poses' pitch cues follow a head tilting back and forward (issue 17, item 8)."""

from __future__ import annotations

import pytest

from pedit.data.poses import BUILTIN_POSES, pitch_offsets

NOSE, R_EYE, L_EYE, R_EAR, L_EAR = 0, 14, 15, 16, 17


def _cues(pid):
    k = BUILTIN_POSES[pid].keypoints
    eye_gap = k[NOSE][1] - (k[R_EYE][1] + k[L_EYE][1]) / 2  # > 0: eyes above the nose (image y grows down)
    ear_rise = k[NOSE][1] - (k[R_EAR][1] + k[L_EAR][1]) / 2  # > 0: ears above the nose
    return eye_gap, ear_rise


def test_chin_up_shortens_the_eye_nose_gap_and_drops_the_ears_below_the_nose():
    up, front, down = _cues("chin-up"), _cues("frontal"), _cues("chin-down")
    assert up[0] < front[0] < down[0]  # foreshortening: the gap shrinks as the chin rises
    assert up[1] < 0 < front[1] < down[1]  # ears: below the nose chin up, above it frontal, higher chin down
    assert down[1] > 0.5 * down[0]  # chin down, the ears come up toward the eye line


@pytest.mark.parametrize("pitch", [5.0, 15.0, 30.0])
def test_pitch_offsets_move_every_cue_the_way_of_the_projection(pitch):
    g = 0.05
    eyes0, ears0 = pitch_offsets(g, 0.0)
    assert (eyes0, ears0) == (g, 0.01)  # frontal: the offsets the poses always had
    up, down = pitch_offsets(g, pitch), pitch_offsets(g, -pitch)
    assert up[0] < eyes0 < down[0] and up[1] < ears0 < down[1]


def test_only_the_pitched_poses_changed():
    k = BUILTIN_POSES["frontal"].keypoints
    assert k[R_EYE] == (0.445, 0.42 - 0.05) and k[R_EAR] == (0.38, 0.42 - 0.01)
    assert len(BUILTIN_POSES) == 12
