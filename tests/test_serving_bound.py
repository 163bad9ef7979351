"""scripts/serving_bound.py: the Amdahl bound from per-row costs and an edit's CPU by stage."""

from conftest import load_script


def _rows(per_threads: dict) -> dict:
    return {t: {str(b): {"cpu_ms_per_row": v} for b, v in by_b.items()} for t, by_b in per_threads.items()}


def test_the_bound_is_the_cpu_an_edit_saved_when_each_network_runs_at_its_cheapest_row():
    rows = {"unet": _rows({"1": {2: 5.0, 4: 4.0, 16: 2.5}, "2": {2: 6.0, 4: 5.0, 16: 3.0}}),
            "vae_decoder": _rows({"1": {1: 20.0, 4: 20.0}, "2": {1: 25.0, 4: 24.0}}),
            "vae_encoder": _rows({"1": {1: 8.0, 4: 4.0}})}
    edit = {"cpu_ms_total": 100.0, "rows_of_each_call": {"unet": [2, 2, 4], "vae_decoder": [1], "vae_encoder": [1]},
            "stages": {"network: U-Net": {"cpu_ms": 36.0}, "network: VAE decoder": {"cpu_ms": 20.0},
                       "network: VAE encoder": {"cpu_ms": 8.0}}}
    got = load_script("serving_bound").bound(rows, edit)
    unet = got["networks"]["unet"]
    # As sent: (2 x 5 + 2 x 5 + 4 x 4) / 8 rows = 4.5 ms a row; cheapest 2.5 (16 rows, 1 thread).
    assert unet["cpu_ms_per_row_as_sent"] == 4.5
    assert unet["best_at"] == {"threads": 1, "rows": 16} and unet["saving"] == 1.8
    assert got["networks"]["vae_decoder"]["saving"] == 1.0
    # The oracle: the edit's CPU with each network's rows at their cheapest, against the edit as measured.
    unet_only = 100.0 - 36.0 + 8 * 2.5  # its 8 rows at 2.5 ms
    everything = unet_only - 8.0 + 4.0
    assert got["gain_unet_only"] == round(100.0 / unet_only, 3)
    assert got["gain_all_networks"] == round(100.0 / everything, 3)
