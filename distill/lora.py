"""LoRA students and fake scores through peft (DMD2's SDXL student: rank 64, alpha 8, on the attention projections).

The adapter's B starts at zero, so a LoRA network starts as its teacher copy. An exported LoRA student is written
twice: fused into a full pipeline folder (stock diffusers runs it), and as `pytorch_lora_weights.safetensors`, which
diffusers' own `load_lora_weights` loads into the teacher's pipeline (where the family's pipeline has that loader:
the family writes it, Teacher.save_lora_weights).
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from teachers.errors import ConfigError

def check_targets(network: nn.Module, targets: list[str]) -> None:
    """Every target names at least one Linear or Conv2d of the network (else peft would silently add nothing)."""
    names = [name for name, module in network.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise ConfigError(f"lora.targets {missing} match no layer of the teacher's {type(network).__name__} "
                          f"(its attention projections are to_q, to_k, to_v, to_out.0 where it has attention); set lora.targets or lora.rank=null")


def add_lora(denoiser: nn.Module, lora: DictConfig) -> nn.Module:
    """LoRA layers of lora.rank / lora.alpha on lora.targets; only they train from now on."""
    from peft import LoraConfig

    network = denoiser.lora_network()
    targets = list(lora.targets)
    check_targets(network, targets)
    network.requires_grad_(False)
    network.add_adapter(LoraConfig(r=int(lora.rank), lora_alpha=float(lora.alpha), target_modules=targets, init_lora_weights=True))
    return denoiser


def has_lora(denoiser: nn.Module) -> bool:
    """Whether LoRA adapters were added (peft marks every LoRA layer it inserts)."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(module, LoraLayer) for module in denoiser.modules())


def lora_state_dict(denoiser: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA weights in diffusers' key format (what load_lora_weights reads), and the adapter's config (rank, alpha,
    targets: without it the loader would take alpha = rank)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    network = denoiser.lora_network()
    config = network.peft_config["default"].to_dict()
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(network)), config


def fuse_lora(denoiser: nn.Module) -> nn.Module:
    """The LoRA weights merged into the base layers and the adapters removed: a plain diffusers UNet."""
    network = denoiser.lora_network()
    network.fuse_lora()
    network.unload_lora()
    return denoiser
