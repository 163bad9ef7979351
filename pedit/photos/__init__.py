"""Real photos in and out: decode, face crop, paste-back, batches."""
