"""`vlm-tune export`: merge a run's LoRA adapter into its base and write a plain, verified HF model folder."""
