"""vlm-tune: fine-tune small vision-language models (SmolVLM / Idefics3) with TRL."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes fetches an optional CPU kernel from the hub on import and warns when offline;
# its built-in fallback works, so the warning is only noise on every offline machine.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
