"""vlm-tune: fine-tune small vision-language models (SmolVLM / Idefics3) with TRL."""

__version__ = "0.1.0"
