"""Parameter-efficient adapters for any model here: LoRA on chosen linear layers (``lora``) and
visual prompt tokens on a ViT-style block stack (``prompt``)."""

from .lora import (
    LoraConfig,
    LoraLinear,
    adapter_names,
    adapter_weights,
    adapter_weights_in_force,
    count_parameters,
    inject_lora,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    set_active_adapter,
    unmerge_lora,
    use_adapter,
)
from .prompt import init_prompts, insert_prompts, run_prompted

__all__ = [
    "LoraConfig",
    "LoraLinear",
    "adapter_names",
    "adapter_weights",
    "adapter_weights_in_force",
    "count_parameters",
    "init_prompts",
    "inject_lora",
    "insert_prompts",
    "load_lora_state_dict",
    "lora_layers",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "merge_lora",
    "run_prompted",
    "set_active_adapter",
    "unmerge_lora",
    "use_adapter",
]
