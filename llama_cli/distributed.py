"""Training on several processes: the torchrun process group, DDP or FSDP wrapping, whole state dicts.

Under torchrun (WORLD_SIZE > 1) every rank joins one process group (gloo on CPU, NCCL on CUDA)
and the model is wrapped either in DistributedDataParallel (each rank holds the whole model;
gradients are averaged) or, with `fsdp`, sharded with FSDP2's `fully_shard` block by block
(each rank holds a slice of every weight, gradient and optimizer state: for models that do not
fit one device). Checkpoints always hold whole tensors, keyed by parameter name, so a run saved
under one layout resumes under another, or on one process.

References: PyTorch's DDP and FSDP2 (`torch.distributed.fsdp.fully_shard`) tutorials;
`torch.distributed.checkpoint.state_dict` for gathering sharded state.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import UsageError, literal


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    fsdp: bool = False  # shard the model (else replicate it with DDP) when world > 1
    local_world: int = 1  # ranks on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharing_memory(self) -> int:
        """Ranks that share this rank's memory: on the CPU every rank of the machine; a GPU is each rank's own."""
        return self.local_world if self.device.type == "cpu" else 1

    @property
    def sharded(self) -> bool:
        return self.fsdp and self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks (the values themselves on one process)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def most(self, value: int) -> int:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device: str = "auto", *, fsdp: bool = False) -> Dist:
    """One process, or a torchrun rank: the process group is joined here (gloo on CPU, NCCL on CUDA).

    `device` "auto" is the rank's GPU when CUDA is present, else the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError.naming(f"{{device}} {literal(device)}: no CUDA device is available here; use {{device}} cpu")
        torch_device = torch.device("cuda", local_rank if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(torch_device)
    elif device == "cpu":
        torch_device = torch.device("cpu")
    else:
        raise UsageError.naming(f"unknown {{device}} '{literal(device)}'; choose auto, cpu, cuda or cuda:N")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, torch_device, fsdp, local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def close_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(model: nn.Module, dist: Dist) -> nn.Module:
    """The module to train: `model` itself on one process, a DDP wrapper, or `model` sharded in place."""
    if dist.world == 1:
        return model
    if dist.sharded:
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:  # type: ignore[union-attr]
            fully_shard(block)  # one all-gather per block in forward and backward
        fully_shard(model)  # embeddings, final norm, head
        return model
    return nn.parallel.DistributedDataParallel(model)


def gradient_sync(trained: nn.Module, dist: Dist, *, sync: bool) -> AbstractContextManager[Any]:
    """Skip the gradient exchange on micro-steps that only accumulate (`sync=False`)."""
    if dist.world == 1 or sync:
        if dist.sharded:
            trained.set_requires_gradient_sync(True)  # type: ignore[operator]
        return nullcontext()
    if dist.sharded:
        trained.set_requires_gradient_sync(False)  # type: ignore[operator]
        return nullcontext()
    return trained.no_sync()  # type: ignore[operator]


def full_state(model: nn.Module, dist: Dist) -> dict[str, torch.Tensor]:
    """Every weight, whole, on the CPU (a collective under FSDP: every rank must call it)."""
    if dist.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {name: t.detach().cpu() for name, t in model.state_dict().items()}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name, whole tensors (a collective under FSDP)."""
    if dist.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = _param_names(model, optimizer)
    saved = optimizer.state_dict()
    return {
        "state": {names[i]: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any], dist: Dist) -> None:
    """Restore what `optimizer_state` returned, under any layout."""
    if dist.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))
        return
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    optimizer.load_state_dict({
        "state": {index[name]: s for name, s in saved["state"].items()},
        "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in saved["param_groups"]],
    })  # fmt: skip


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (the order its state_dict numbers them)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
