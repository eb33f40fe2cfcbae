"""Captioning diffusion-LoRA image folders (`vlm-tune caption`: captioner, formats) and caption QA
(`vlm-tune caption-lint`: lint, caption_set, analysis, qa_report)."""
