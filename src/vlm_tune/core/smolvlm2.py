"""SmolVLM2's processor on a machine without torchvision (our CPU machines).

SmolVLM2 is transformers' `model_type: smolvlm`: the Idefics3 model under another name, whose processor
(`SmolVLMProcessor`) also takes a video processor. That video processor needs torchvision, so without it
`AutoProcessor.from_pretrained` fails for *every* SmolVLM2 folder, even for images only — and PyPI's
torchvision breaks the CPU torch, so installing it is no way out (docs/smolvlm2.md).

This module builds the same processor from the folder's image processor (PIL backend), tokenizer and chat
template, with `VideoProcessorStandIn` in the video slot: it keeps the folder's video settings and writes
them back unchanged on `save_pretrained` (a machine with torchvision then loads the saved folder with
`AutoProcessor` as usual), and refuses video input in one clear error. Images and text go through
transformers' own SmolVLMProcessor code: same prompt expansion, same tensors.
"""

from __future__ import annotations

import copy
import json

import transformers
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import PushToHubMixin, cached_file, is_torchvision_available

from vlm_tune.core.errors import UserError

PROCESSOR_CLASS = "SmolVLMProcessor"
NUM2WORDS_MISSING = "SmolVLM2's processor needs the num2words package: pip install num2words"


# --- video stand-in --------------------------------------------------------------------------
class VideoProcessorStandIn(PushToHubMixin):
    """Sits where SmolVLMProcessor wants its video processor: holds the folder's settings, processes nothing."""

    _auto_class = None  # ProcessorMixin.save_pretrained asks every sub-processor

    def __init__(self, config: dict | None = None):
        self.config = copy.deepcopy(config or {})
        sampling = self.config.get("video_sampling") or {}
        # SmolVLMProcessor.apply_chat_template reads these two; the real video processor takes them from
        # video_sampling (max_frames, fps) when the config has it.
        self.num_frames = sampling.get("max_frames", self.config.get("num_frames"))
        self.fps = sampling.get("fps", self.config.get("fps"))

    def to_dict(self) -> dict:
        return copy.deepcopy(self.config)

    def __call__(self, *args, **kwargs):
        raise UserError("video input needs torchvision (SmolVLM2's video processor); this machine has none, "
                        "so vlm-tune handles SmolVLM2 images and text only here")

    def __repr__(self) -> str:
        return f"VideoProcessorStandIn({json.dumps(self.config, sort_keys=True)})"


# --- processor -------------------------------------------------------------------------------
class SmolVLMProcessor(transformers.SmolVLMProcessor):
    """transformers' SmolVLMProcessor that takes a `VideoProcessorStandIn` and loads without torchvision.

    Same class name on purpose: `save_pretrained` writes the class name as `processor_class` (in
    processor_config.json and tokenizer_config.json), and a machine with torchvision must load the saved
    folder with transformers' own class."""

    def check_argument_for_proper_class(self, argument_name, argument):
        # The stock check looks the video class up in VIDEO_PROCESSOR_MAPPING, which is a dummy without
        # torchvision (AttributeError: ... has no attribute '_extra_content').
        if isinstance(argument, VideoProcessorStandIn):
            return VideoProcessorStandIn
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """[image processor, tokenizer, video stand-in] of a folder; transformers reads the rest (image_seq_len,
        chat template) from processor_config.json / chat_template.* as for any processor."""
        from transformers.video_processing_utils import VideoProcessorMixin

        image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        try:  # where transformers itself looks: processor_config.json, video_ then preprocessor_config.json
            video_config, _ = VideoProcessorMixin.get_video_processor_dict(pretrained_model_name_or_path, **kwargs)
        except OSError:
            video_config = {}
        return [image_processor, tokenizer, VideoProcessorStandIn(video_config)]


def build_processor(image_processor, tokenizer, video_config: dict, image_seq_len: int, chat_template: str):
    """A SmolVLM2 processor from its parts (the tiny model's builder, `vlm-tune plan`'s stand-in)."""
    try:
        return SmolVLMProcessor(image_processor, tokenizer, VideoProcessorStandIn(video_config),
                                image_seq_len=image_seq_len, chat_template=chat_template)
    except ImportError as exc:
        if "num2words" in str(exc):
            raise UserError(NUM2WORDS_MISSING) from None
        raise


# --- the route load_processor takes when AutoProcessor fails ---------------------------------
def declared_processor_class(name: str, revision: str | None = None) -> str | None:
    """The `processor_class` a model folder (or hub id in the local cache) names, from its config files."""
    for filename in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            path = cached_file(name, filename, revision=revision, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        except OSError:
            path = None
        if path:
            with open(path, encoding="utf-8") as handle:
                declared = json.load(handle).get("processor_class")
            if declared:
                return declared
    return None


def load_without_torchvision(name: str, revision: str | None, error: Exception):
    """SmolVLM2's processor when `AutoProcessor` failed with `error` for want of torchvision (or num2words);
    any other failure is raised as it was."""
    if "num2words" in str(error):
        raise UserError(NUM2WORDS_MISSING) from None
    if is_torchvision_available() or declared_processor_class(name, revision) != PROCESSOR_CLASS:
        raise error
    try:
        return SmolVLMProcessor.from_pretrained(name, revision=revision)
    except ImportError as exc:
        if "num2words" in str(exc):
            raise UserError(NUM2WORDS_MISSING) from None
        raise
