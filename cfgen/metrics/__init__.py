"""Image metrics (identity preservation, reconstruction quality)."""
