"""The MCDM and model/base folders: loading, saving, shape checks (paper §3.3)."""
