"""Data-parallel teacher rounds: each rank unrolls its own shard, every SGD step uses the ranks' mean gradient.

With ``W`` ranks holding equal-size shards of a batch, averaging the per-rank gradients in every unrolled step
makes the unroll the single-process unroll on the concatenated batch. :class:`RankMean` provides that average
differentiably, to any order. Everything a rank decides on its own (did it draw its batches? is the round
finite? is the update accepted?) is agreed on by a collective (:meth:`RankMean.all_true`, :func:`agree_on_draw`),
and :meth:`RankMean.check_in_sync` verifies that every rank holds the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

__all__ = ["RankMean", "agree_on_draw", "shard_batches", "unwrap_data_parallel"]

T = TypeVar("T")


class _MeanOverRanks(torch.autograd.Function):
    """``all_reduce(x) / W`` with a backward that is the same operation, so it nests to any order
    (docs/design-notes.md, "Distributed rounds", says why not torch's own)."""

    @staticmethod
    def forward(ctx: FunctionCtx, tensor: Tensor, group: Any, world_size: int) -> Tensor:  # type: ignore[override]
        ctx.group, ctx.world_size = group, world_size  # type: ignore[attr-defined]
        reduced = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
        return reduced.div_(world_size)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        # every rank's output is the same mean of every rank's input, so d(sum of the ranks' objectives)/d input
        # is the mean of the ranks' upstream gradients: the forward operation applied to them
        return _MeanOverRanks.apply(grad, ctx.group, ctx.world_size), None, None


class RankMean:
    """Averages across the ranks of a process group; what a distributed :class:`dynaloss.Teacher` uses.

    Args:
        process_group: an initialised ``torch.distributed`` group, or ``None`` for the default (world) group.

    Raises:
        ValueError: ``torch.distributed`` is not available or not initialised.
    """

    def __init__(self, process_group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "process_group needs an initialised torch.distributed: call torch.distributed.init_process_group "
                "(e.g. under torchrun) before constructing the Teacher"
            )
        self.group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)

    def mean(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The ranks' mean of each tensor, differentiably, with one collective for all of them."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        averaged = _MeanOverRanks.apply(flat, self.group, self.world_size)
        return [chunk.view_as(t) for chunk, t in zip(averaged.split([t.numel() for t in tensors]), tensors)]

    def mean_detached(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """:meth:`mean` for values that are not differentiated further (no graph is kept)."""
        with torch.no_grad():
            return [t.detach() for t in self.mean([t.detach() for t in tensors])] if tensors else []

    def all_true(self, flags: Tensor) -> Tensor:
        """Per-position logical AND of a boolean vector over the ranks: every rank decides the same."""
        as_int = flags.to(torch.int32)
        dist.all_reduce(as_int, op=dist.ReduceOp.MIN, group=self.group)
        return as_int.bool()

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a CPU-side decision, made the same everywhere)."""
        value = torch.tensor([int(flag)], dtype=torch.int32, device=self._device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def check_in_sync(self, named: dict[str, Sequence[Tensor]]) -> None:
        """Raise ``RuntimeError`` naming what differs when the ranks do not hold the same values.

        Each entry is reduced to two position-weighted sums (a permutation or a single changed value
        changes them) and the ranks compare them exactly, with one collective.
        """
        device = self._device()
        sums = []
        for tensors in named.values():
            flat = torch.cat([t.detach().reshape(-1).to(device, torch.float64) for t in tensors]) if tensors else None
            if flat is None or flat.numel() == 0:
                sums.append(torch.zeros(2, dtype=torch.float64, device=device))
                continue
            position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=device) / flat.numel()
            sums.append(torch.stack([flat.sum(), (flat * position).sum()]))
        local = torch.stack(sums)
        low, high = local.clone(), local.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self.group)
        differ = [name for name, same in zip(named, (low == high).all(dim=1).tolist()) if not same]
        if differ:
            raise RuntimeError(
                f"ranks out of sync after a teacher round: {', '.join(differ)} differ between ranks; start every "
                "rank from the same DLN, teacher and student (same seed or checkpoint, a DDP-wrapped student)"
            )

    def _device(self) -> torch.device:
        # NCCL only reduces CUDA tensors; gloo takes CPU ones
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def agree_on_draw(sync: RankMean | None, draw: Callable[[], T]) -> T:
    """``draw()`` on every rank of ``sync``, or on none: a rank whose draw raises tells the others first.

    Raises:
        TypeError, ValueError: this rank's ``draw()`` raised it (after telling the other ranks).
        ValueError: another rank's draw raised, so no rank goes on (none waits forever in a collective).
    """
    try:
        drawn = draw()
    except (TypeError, ValueError):
        if sync is not None:
            sync.any_rank(True)
        raise
    if sync is not None and sync.any_rank(False):
        raise ValueError("another rank could not draw this round's batches (see its error); no rank ran it")
    return drawn


def unwrap_data_parallel(student: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` (or ``DataParallel``) wrapper holds; others unchanged.

    The unroll calls the student through ``functional_call`` with its own parameter names: the wrapper's
    forward would add its own gradient hooks and buffer broadcasts, which the unroll does itself.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return student.module if isinstance(student, wrappers) else student


def shard_batches(batches: Iterator[Any], rank: int, world_size: int) -> Iterator[tuple[Tensor, ...]]:
    """This rank's equal share of every batch: the ranks' shards, concatenated in rank order, are the batch.

    Raises:
        ValueError: a batch's size is not a multiple of ``world_size`` (equal shards are what make the mean of
            the ranks' losses the loss of the whole batch).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    for batch in batches:
        size = len(batch[0])
        if size % world_size:
            raise ValueError(f"a batch of {size} samples cannot be split into {world_size} equal shards")
        share = size // world_size
        yield tuple(part[rank * share : (rank + 1) * share] for part in batch)
