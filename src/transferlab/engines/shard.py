"""The frozen pass across processes: under torchrun or SLURM, each rank runs the backbone over its
share of the images and the outputs are gathered once, so every rank holds all of them (the feature
store's passes: feature extraction, the search's features, rank). One process: no-op."""

from __future__ import annotations

import numpy as np


JOINED = False  # this process joined the launcher's group itself: every rank runs the same frozen passes


def init_from_environment() -> None:
    """Join the launcher's process group (Lightning's cluster environments read torchrun's and
    SLURM's variables) before the frozen pass; Lightning's Trainer later finds it and reuses it."""
    import torch
    import torch.distributed as dist
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if not dist.is_available() or dist.is_initialized():
        return
    for kind in (TorchElasticEnvironment, SLURMEnvironment):
        if kind.detect():
            env = kind()
            if env.world_size() > 1:
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                        init_method=f"tcp://{env.main_address}:{env.main_port}",
                                        rank=env.global_rank(), world_size=env.world_size())
                global JOINED
                JOINED = True
            return


def rank_and_size() -> tuple[int, int]:
    """(rank, ranks) of the group joined by init_from_environment; (0, 1) otherwise (a group that
    Lightning's own launcher starts for training exists only in training, where rank 0 alone goes on)."""
    import torch.distributed as dist

    if JOINED and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def everywhere(flag: bool) -> bool:
    """True only when `flag` holds on every rank (a cache hit on one node and a miss on another
    must not send them down different paths)."""
    _, size = rank_and_size()
    if size == 1:
        return flag
    import torch.distributed as dist

    flags = [None] * size
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def sharded(compute, indices: np.ndarray) -> np.ndarray:
    """`compute(indices)` with each rank taking every size-th image from its rank on, gathered in order."""
    rank, size = rank_and_size()
    if size == 1:
        return compute(indices)
    import torch.distributed as dist

    mine = compute(indices[rank::size])
    parts = [None] * size
    dist.all_gather_object(parts, mine)
    full = next((p for p in parts if len(p)), parts[0])
    out = np.empty((len(indices), *full.shape[1:]), dtype=full.dtype)
    for k, part in enumerate(parts):
        if len(part):
            out[k::size] = part
    return out
