"""LoRA students and fake scores through peft (DMD2's SDXL student: rank 64, alpha 8, on the attention projections).

The adapter's B starts at zero, so a LoRA network starts as its teacher copy. An exported LoRA student is written
twice: fused into a full pipeline folder (stock diffusers runs it), and as `pytorch_lora_weights.safetensors`, which
diffusers' own `load_lora_weights` loads into the teacher's pipeline.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from teachers.errors import ConfigError

LORA_FILE = "pytorch_lora_weights.safetensors"


def lora_network(denoiser: nn.Module) -> nn.Module:
    """The diffusers network LoRA layers go into (the adapter's `unet`); refused for denoisers without one."""
    unet = getattr(denoiser, "unet", None)
    if unet is None or not hasattr(unet, "add_adapter"):
        raise ConfigError(f"lora.rank is set, but {type(denoiser).__name__} has no diffusers UNet to put LoRA layers in; set lora.rank=null")
    return unet


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

    network = lora_network(denoiser)
    targets = list(lora.targets)
    check_targets(network, targets)
    network.requires_grad_(False)
    network.add_adapter(LoraConfig(r=int(lora.rank), lora_alpha=float(lora.alpha), target_modules=targets, init_lora_weights=True))
    return denoiser


def has_lora(denoiser: nn.Module) -> bool:
    return bool(getattr(getattr(denoiser, "unet", None), "peft_config", None))


def lora_state_dict(denoiser: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA weights in diffusers' key format (what load_lora_weights reads), and the adapter's config (rank, alpha,
    targets: without it the loader would take alpha = rank)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    config = denoiser.unet.peft_config["default"].to_dict()
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser.unet)), config


def fuse_lora(denoiser: nn.Module) -> nn.Module:
    """The LoRA weights merged into the base layers and the adapters removed: a plain diffusers UNet."""
    denoiser.unet.fuse_lora()
    denoiser.unet.unload_lora()
    return denoiser


def save_lora_weights(folder, lora: tuple[dict[str, torch.Tensor], dict]) -> None:
    """pytorch_lora_weights.safetensors (with the adapter's config as metadata) for StableDiffusionPipeline.load_lora_weights."""
    from diffusers import StableDiffusionPipeline

    weights, config = lora
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=weights, unet_lora_adapter_metadata=config,
                                              weight_name=LORA_FILE, safe_serialization=True)
