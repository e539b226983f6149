"""LoRA folders of the paper's checkpoints: ``<run>/checkpoint-STEP/lora`` written by PEFT.

Tencent-Hunyuan/Precise evaluates ``checkpoint-STEP/lora`` with
``PeftModel.from_pretrained(transformer, path)`` (``precise_sde/eval/infer_eval.py``): a
PEFT adapter folder, ``adapter_config.json`` + ``adapter_model.safetensors`` with keys
under ``base_model.model.``. diffusers' ``load_lora_weights`` reads those weights but not
the config, so a ``lora_alpha`` other than the rank would be lost; this loader rebuilds
the adapter from the folder's own config (rank, alpha, targets) on the diffusers
transformer, then loads the weights, so the result equals PEFT's.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "adapter_config.json"
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_PREFIX = "base_model.model."


def is_peft_folder(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def load_peft_adapter(transformer, folder: str | Path, adapter_name: str) -> None:
    import torch
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    config = LoraConfig.from_pretrained(str(folder))
    weights = next((folder / w for w in _WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no {' or '.join(_WEIGHTS)} beside {CONFIG}")
    if weights.suffix == ".safetensors":
        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k[len(_PREFIX):] if k.startswith(_PREFIX) else k: v for k, v in state.items()}
    transformer.add_adapter(config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    if result.unexpected_keys:
        raise ValueError(f"{weights}: weights for modules this transformer lacks, e.g. {result.unexpected_keys[:3]}")
    transformer.set_adapter(adapter_name)
