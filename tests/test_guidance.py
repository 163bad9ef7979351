"""Guidance identities (paper Eq. 1 and 3) and the sampler on an analytic denoiser."""

import torch

from pedit.edit.guidance import GuidanceScales, branch_eps, guided_eps, masked_two_branch, multi_cfg


def _terms(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 4, 3, 3, generator=g) for _ in range(5)]


def test_all_scales_one_give_the_fully_conditioned_prediction():
    e_none, e_s, e_s_im, e_full, _ = _terms()
    out = multi_cfg(e_none, e_s, e_s_im, e_full, GuidanceScales(1.0, 1.0, 1.0))
    torch.testing.assert_close(out, e_full, rtol=0, atol=1e-6)


def test_all_scales_zero_give_the_unconditional_prediction():
    e_none, e_s, e_s_im, e_full, _ = _terms()
    assert torch.equal(multi_cfg(e_none, e_s, e_s_im, e_full, GuidanceScales(0.0, 0.0, 0.0)), e_none)


def test_multi_cfg_matches_the_nested_formula_term_by_term():
    e_none, e_s, e_s_im, e_full, _ = _terms()
    s = GuidanceScales(1.7, 0.6, 5.0)
    expected = e_none + 1.7 * (e_s - e_none) + 0.6 * (e_s_im - e_s) + 5.0 * (e_full - e_s_im)
    torch.testing.assert_close(multi_cfg(e_none, e_s, e_s_im, e_full, s), expected)


def test_zero_mask_gives_the_source_branch_exactly_and_ones_the_target():
    eps_b, eps_a = _terms()[:2]
    assert torch.equal(masked_two_branch(eps_b, eps_a, torch.zeros(2, 1, 3, 3)), eps_a)
    torch.testing.assert_close(masked_two_branch(eps_b, eps_a, torch.ones(2, 1, 3, 3)), eps_b, rtol=0, atol=0)


def test_guided_eps_reads_the_five_rows_in_order():
    rows = torch.cat(_terms())  # (5B, 4, 3, 3): ∅∅∅, s∅∅, s·im·∅, s·im·p_b, s·im·p_a
    e_none, e_s, e_s_im, e_b, e_a = rows.chunk(5)
    ones = GuidanceScales(1.0, 1.0, 1.0)
    assert torch.equal(guided_eps(rows, ones, mask=torch.zeros(2, 1, 3, 3)), multi_cfg(e_none, e_s, e_s_im, e_a, ones))
    torch.testing.assert_close(guided_eps(rows, ones), e_b, rtol=0, atol=1e-6)
    b, a = branch_eps(rows, ones)
    torch.testing.assert_close(b, e_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(a, e_a, rtol=0, atol=1e-6)
    half = torch.zeros(2, 1, 3, 3)
    half[..., :, :1] = 1  # left column edited
    mixed = guided_eps(rows, GuidanceScales(1.5, 1.0, 3.0), mask=half)
    b, a = branch_eps(rows, GuidanceScales(1.5, 1.0, 3.0))
    assert torch.equal(mixed[..., 1:], a[..., 1:])
    torch.testing.assert_close(mixed[..., :1], b[..., :1])


def test_sampler_with_an_oracle_denoiser_recovers_the_clean_latent():
    """If denoise returns the true noise, DDIM must land on the clean latent it was derived from."""
    from diffusers import DDPMScheduler

    from pedit.edit.sampler import make_scheduler, sample

    cfg = dict(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False).config)
    scheduler = make_scheduler("ddim", cfg)
    x0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    alphas = scheduler.alphas_cumprod
    calls = []

    def denoise(z_in, t, context):  # z_in: (5, 8, h, w); returns the exact noise in z_t
        calls.append(z_in.shape[0])
        a = alphas[int(t[0])]  # one timestep a row; every row here at the same step
        z_t = z_in[:, :4]
        return (z_t - a.sqrt() * x0) / (1 - a).sqrt()

    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    out = sample(denoise, scheduler, z, torch.zeros(5, 4, 4, 4), torch.zeros(5, 3, 8),
                 lambda eps: guided_eps(eps, GuidanceScales(1.0, 1.0, 1.0)), num_steps=10)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)
    assert calls == [5] * 10  # one call per step, five rows
