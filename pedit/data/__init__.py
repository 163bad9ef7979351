"""Stage 1 (paper §3.2): pair folders, directions and every gen-pairs source."""
