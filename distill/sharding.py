"""FSDP2 for the student and the fake score (torch's fully_shard), and whole tensors in and out of its sharded ones
(DTensors), so a checkpoint and an export hold what one process would: a run resumes on another process count, or with
and without FSDP. Plain tensors pass through unchanged."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

from distill.config import env_flag


@dataclass(frozen=True)
class FsdpSettings:
    """What `accelerate launch --config_file configs/accelerate/fsdp.yaml` asks for (fsdp_config)."""

    min_num_params: int  # fsdp_min_num_params: a submodule with this many parameters of its own is a sharded unit
    reshard_after_forward: bool  # fsdp_reshard_after_forward: free the gathered weights after each forward


def fsdp_settings(environ=os.environ) -> FsdpSettings | None:
    """The FSDP2 settings of an FSDP launch (ACCELERATE_USE_FSDP, checked to be version 2 by distill.config), else
    None. The flag is taken out of the environment: the toolkit shards the networks itself (on CPU processes too,
    where accelerate runs no FSDP), and accelerate then runs as for DDP, without wrapping them."""
    if not env_flag(environ, "ACCELERATE_USE_FSDP"):
        return None
    environ.pop("ACCELERATE_USE_FSDP")
    return FsdpSettings(int(float(environ.get("FSDP_MIN_NUM_PARAMS", 1e8))),
                        environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in ("true", "1", "full_shard"))


def shard_network(network: torch.nn.Module, settings: FsdpSettings) -> torch.nn.Module:
    """fully_shard every submodule holding at least min_num_params parameters not yet in a unit (innermost first, as
    accelerate's SIZE_BASED_WRAP), then the network itself; in place."""
    from torch.distributed.fsdp import fully_shard

    def own(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if not isinstance(p, DTensor))

    # Containers without a forward of their own (ModuleList, ModuleDict) run no hooks: their members are the units.
    inner = [m for m in network.modules() if m is not network and type(m).forward is not torch.nn.Module.forward]
    for module in reversed(inner):  # children come after their parents in modules(): reversed, innermost first
        if own(module) >= settings.min_num_params:
            fully_shard(module, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(network, reshard_after_forward=settings.reshard_after_forward)
    return network


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded one: every process calls it, in the same order)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shaped_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out as `like` is: this process's shard of it for a sharded `like`, else itself."""
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(like.device), like.device_mesh, like.placements)


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() with every tensor whole (on every process)."""
    return {name: full(t) for name, t in module.state_dict().items()}


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors into a module, sharded or not (strict: the keys must match)."""
    own = module.state_dict()
    module.load_state_dict({name: shaped_like(t, own[name]) if name in own else t for name, t in state.items()})


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with every state tensor whole (moments of sharded parameters gathered)."""
    saved = optimizer.state_dict()
    return {**saved, "state": {i: {k: full(v) for k, v in s.items()} for i, s in saved["state"].items()}}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load an optimizer state of whole tensors, each moment laid out as its parameter is."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {i: {k: shaped_like(v, params[int(i)]) if v.dim() else v for k, v in s.items()} for i, s in saved["state"].items()}
    optimizer.load_state_dict({**saved, "state": state})


def whole_student(student: torch.nn.Module, ema, template: torch.nn.Module) -> torch.nn.Module:
    """A plain (unsharded) student with the EMA weights when there is an EMA, else the student's: every process
    gathers them; `template` is an unsharded network of the same structure (a copy of the teacher) that receives them."""
    weights = full_state_dict(student)
    shadow = None if ema is None else [full(s) for s in ema.shadow_params]
    template.load_state_dict(weights)
    if shadow is not None:
        with torch.no_grad():
            for param, value in zip(template.parameters(), shadow):
                param.copy_(value)
    return template
