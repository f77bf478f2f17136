"""torch.distributed under torchrun: one place for rank, sharding, wrapping and collectives.

`torchrun --nproc_per_node N -m skinaug train vqvae ...` sets RANK, LOCAL_RANK and WORLD_SIZE; a plain
`skinaug ...` sets none of them and every method here is then a no-op, so one process behaves
exactly as without this module. NCCL on GPUs, gloo on CPU.

torch is imported only by the methods that need it: `Distributed()`, one process, is what the onnx backend runs
as without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_name: str = "auto") -> "Distributed":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        if use_cuda:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank, world_size, local_rank, device)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's disjoint share; every rank gets the same count so DDP steps stay in lockstep."""
        if not self.enabled:
            return indices
        per_rank = len(indices) // self.world_size
        return indices[self.rank :: self.world_size][:per_rank]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # codebook buffers are all-reduced inside the quantizer, so DDP need not broadcast them
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

    def sync_codebooks(self, model: torch.nn.Module) -> None:
        """Rank 0's quantizer buffers everywhere: a guard against drift from floating-point reduction order."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for name, buffer in model.named_buffers():
            dist.broadcast(buffer, 0)

    def broadcast_object(self, value):
        """Rank 0's value on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether `value` is finite on every rank: all ranks must stop together, or the others hang."""
        import torch
        import torch.distributed as dist

        finite = torch.isfinite(value).all().to(torch.float32).reshape(1)
        if self.enabled:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def all_gather_objects(self, value):
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered
