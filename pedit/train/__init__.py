"""Stage 2 (paper §3.3): the MCDM training loop, its config, batches and dropout, the latent cache."""
