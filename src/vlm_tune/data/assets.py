"""First-use assets of the embedded defaults: the tiny model and the synthetic datasets, built where a
recipe points so `make sft` / `make caption` / `make dpo` need no hub."""

from __future__ import annotations

import importlib
import json
import os

from vlm_tune.core.errors import UserError

# recipe `synthetic_builder:` name -> data_builders module (each exposes QUESTION_TYPES, build_info,
# read_build_info, build and save)
BUILDER_MODULES = {"chartqa": "data_builders.chartqa", "scenes": "data_builders.scenes"}


def synthetic_builder(name: str):
    return importlib.import_module(BUILDER_MODULES[name])


# --- build on first use -----------------------------------------------------------------
def ensure_assets(script_args, model_args) -> None:
    """The tiny recipe builds its model and data on first use, so `make sft` needs no hub."""
    if script_args.build_tiny_model and not os.path.isdir(model_args.model_name_or_path):
        from vlm_tune.core.tiny_model import make_tiny_model

        print(f"Building the tiny SmolVLM-architecture model at {model_args.model_name_or_path} (first use)")
        make_tiny_model(model_args.model_name_or_path, seed=script_args.tiny_model_seed)
    if script_args.synthetic_dataset:
        # Each synthetic builder module exposes QUESTION_TYPES, build_info, read_build_info, build and save.
        builder = synthetic_builder(script_args.synthetic_builder)
        n_train, n_val, n_test = script_args.synthetic_sizes
        wanted = builder.build_info(n_train, n_val, n_test, script_args.synthetic_seed, script_args.synthetic_image_size,
                                    script_args.synthetic_types or builder.QUESTION_TYPES)
        if os.path.exists(script_args.dataset_name):
            found = builder.read_build_info(script_args.dataset_name)
            if found != wanted:  # never train on stale data, never delete a folder we may not own
                seen = f"built with {json.dumps(found)}" if found else "it has no synthetic_build.json"
                raise UserError(
                    f"{script_args.dataset_name} exists but was not built with this recipe's synthetic_* settings "
                    f"({seen}); delete it to rebuild, or point dataset_name elsewhere"
                )
            return
        print(f"Building synthetic {script_args.synthetic_builder} ({n_train}/{n_val}/{n_test}) at "
              f"{script_args.dataset_name} (first use)")
        splits = builder.build(
            n_train, n_val, n_test, seed=script_args.synthetic_seed, image_size=script_args.synthetic_image_size,
            num_proc=min(2, os.cpu_count() or 1), question_types=wanted["question_types"],
        )
        builder.save(splits, script_args.dataset_name, info=wanted)
