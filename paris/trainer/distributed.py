"""Data parallel inside one expert: the ranks of one `torchrun --standalone` launch, one pod.

Paris's experts share nothing with each other. One expert may still spread its own batch
over the devices of its node, as DDM trained each expert on a whole 8-GPU node: the process
group is created here, from torchrun's environment, and it must hold ranks of one expert
only (`check_one_expert`). Every rank draws the same global batch from the step's seeded
generator and computes on its own slice (`local_part`), so the averaged gradient is the
global batch's gradient and a resumed run replays the same batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from paris.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_ranks() -> Ranks:
    """The ranks torchrun (or any launcher setting its variables) started this process with."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def current_ranks() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks()


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank of a CUDA launch computes on its own GPU of the node."""
    if device.type == "cuda" and ranks.world > 1:
        return torch.device("cuda", ranks.local_rank)
    return device


def init(device: torch.device) -> bool:
    """Join torchrun's process group (gloo on the CPU, NCCL on CUDA) when launched by it;
    True when this call created the group (and `finish` should end it)."""
    ranks = launched_ranks()
    if ranks.world == 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def check_one_expert(identity: str, batch_size: int) -> Ranks:
    """Refuse a process group whose ranks train different experts (or the router and an
    expert): the collective must never cross the boundary Paris draws between experts."""
    ranks = current_ranks()
    if ranks.world == 1:
        return ranks
    seen: list[str | None] = [None] * ranks.world
    dist.all_gather_object(seen, identity)
    models = sorted({str(s) for s in seen})
    if len(models) > 1:
        raise TrainingError(
            f"a torch.distributed group spans {len(models)} different models ({', '.join(models)}): "
            "data parallel is only allowed among the ranks of one expert"
        )
    if batch_size % ranks.world:
        raise ConfigError(f"train.batch_size {batch_size} is not divisible by the {ranks.world} ranks of this expert")
    return ranks


def local_part(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's slice of global-batch tensors (all of them when not distributed)."""
    ranks = current_ranks()
    if ranks.world == 1:
        return tensors
    out = []
    for t in tensors:
        per = t.shape[0] // ranks.world
        out.append(t[ranks.rank * per : (ranks.rank + 1) * per])
    return tuple(out)


def finish(owned: bool) -> None:
    if owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
