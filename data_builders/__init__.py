"""Dataset builders for vlm-tune (synthetic data with known answers)."""
