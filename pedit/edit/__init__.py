"""Stage 3 (paper §3.4): guidance (Eq. 1, 3), the sampler, the editing mask and the Editor API."""
