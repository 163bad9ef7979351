"""pedit eval: ground truth (toon pairs), real photos, mask tuning, latent-grid ceilings."""
