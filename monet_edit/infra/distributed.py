"""Data parallelism on torch.distributed, launched by torchrun (or by `--nproc N`, which runs it).

Profiles and evaluation results are sums or mergeable moments (profiling.stats, scoring.LossSums), so ranks split the work
by whole batches, compute partial sums and add them with an all-reduce: the same batches as one
process, only the order of the final float64 additions differs. Rank 0 alone decides (what to
reuse or resume), writes files and prints; the others follow its decisions through broadcasts.

A rank that dies makes torchrun stop the others; nothing is published before the last reduce.
No torch at import time (the CLI imports this module to read the environment).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MonetEditError, UsageError

TIMEOUT_MINUTES = 30  # a collective waiting longer than this fails (a stuck peer, not slow work)


def launched() -> bool:
    """True inside a process started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Group:
    """This process's place in the job: rank `rank` of `world` (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object built by our own code)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], Any], *, share: bool = True) -> Any:
        """fn() on rank 0 alone. Every rank gets its result (with `share`) or raises its
        MonetEditError, so a decision that fails on rank 0 stops all ranks with the same line."""
        value, error = None, None
        if self.main:
            try:
                value = fn()
            except MonetEditError as exc:
                error = exc
        if self.world > 1:
            sent, error = self.share((value if share else None, error))
            if not self.main:
                value = sent
        if error is not None:
            error.echoed_by_rank0 = not self.main  # rank 0 prints it; the others stay quiet
            raise error
        return value

    def first(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0 first (it fills the caches the others then read), then on the others."""
        result = self.on_main(fn, share=False)
        return result if self.main else fn()

    def sum(self, tensors: Sequence) -> list:
        """Elementwise sums over ranks, in float64, returned on the CPU."""
        import torch

        out = [t.detach().to(torch.float64) for t in tensors]
        if self.world == 1:
            return [t.cpu() for t in out]
        import torch.distributed as dist

        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        flat = torch.cat([t.reshape(-1) for t in out]).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu()
        pieces, start = [], 0
        for t in out:
            pieces.append(flat[start : start + t.numel()].view_as(t))
            start += t.numel()
        return pieces

    def gather(self, tensors: Sequence) -> list[list]:
        """Every rank's `tensors` (same shapes on every rank), in rank order, float64 on the CPU."""
        import torch

        out = [t.detach().to(torch.float64).cpu() for t in tensors]
        if self.world == 1:
            return [out]
        import torch.distributed as dist

        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        flat = torch.cat([t.reshape(-1) for t in out]).to(device)
        slots = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(slots, flat)
        ranks = []
        for slot in slots:
            slot, pieces, start = slot.cpu(), [], 0
            for t in out:
                pieces.append(slot[start : start + t.numel()].view_as(t))
                start += t.numel()
            ranks.append(pieces)
        return ranks

    def sum_numbers(self, values: Sequence[float]) -> list[float]:
        """Sums over ranks of plain numbers (float64; integer counts stay exact below 2**53)."""
        import torch

        (total,) = self.sum([torch.tensor([float(v) for v in values], dtype=torch.float64)])
        return total.tolist()

    def take(self, count: int, batch_size: int = 1) -> list[int]:
        """This rank's items of `count`: whole batches of `batch_size`, dealt round-robin."""
        batches = range(self.rank, -(-count // batch_size), self.world)
        return [i for b in batches for i in range(b * batch_size, min(count, (b + 1) * batch_size))]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


_GROUP: Group | None = None


def group() -> Group:
    """The current group (single process until `init` ran under torchrun)."""
    return _GROUP or Group()


def init(device: str | None = None, nproc: int | None = None) -> Group:
    """Join the torchrun job described by the environment (gloo on CPU, NCCL on CUDA).

    `nproc`, when given, must match the job's world size (a mistyped launch fails early)."""
    global _GROUP
    if not launched():
        return group()
    world = int(os.environ["WORLD_SIZE"])
    if nproc is not None and nproc != world:
        raise UsageError(f"--nproc {nproc} but torchrun started {world} ranks")
    if _GROUP is not None:
        return _GROUP
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device is not None and str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available")
        if local >= torch.cuda.device_count():
            raise UsageError(f"rank {rank} needs GPU {local} but this machine has {torch.cuda.device_count()} "
                             f"(use at most that many ranks per node)")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=TIMEOUT_MINUTES))
    atexit.register(_shutdown)
    _GROUP = Group(rank, world, local, backend)
    return _GROUP


def rank_device(device: str | None, grp: Group) -> str | None:
    """`cuda` means this rank's own GPU (cuda:LOCAL_RANK) under torchrun."""
    if grp.world > 1 and device is not None and str(device) == "cuda":
        return f"cuda:{grp.local_rank}"
    return device


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- launching


def should_launch(nproc: int | None) -> bool:
    """--nproc N > 1 outside torchrun: this process becomes the launcher."""
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc must be at least 1 (got {nproc})")
    return nproc is not None and nproc > 1 and not launched()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `monet-edit ARGV` on `nproc` local ranks through torchrun's launcher; the exit code.

    Equivalent to `torchrun --standalone --nproc_per_node NPROC -m monet_edit ARGV`, with
    torchrun's own logging quietened and a failing rank summarised in one line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    for name in ("torch.distributed.elastic", "torch.distributed.run"):  # failures: our one line instead
        logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "--monitor_interval=0.2", "-m", "monet_edit"])
    args.training_script_args = list(argv)  # not parsed: argparse would match --nproc to its own options
    try:
        run(args)
    except ChildFailedError as exc:
        return _report_failure(exc)
    return 0


def _report_failure(exc) -> int:
    """3 when rank 0 failed a gate (it printed the verdict); otherwise one line for the first failing rank."""
    import signal

    first = exc.get_first_failure()[1]
    zero = exc.failures.get(0)
    if zero is not None and zero.exitcode == 3 and all(
            f.exitcode == 3 or (f.exitcode < 0 and f.timestamp >= zero.timestamp)
            for rank, f in exc.failures.items() if rank != 0):
        # only rank 0 fails a gate, after writing its results and printing the verdict; a rank still
        # running then is stopped by the launcher (a signal), which is not a failure of its own
        return 3
    if first.exitcode < 0:
        try:
            name = signal.Signals(-first.exitcode).name
        except ValueError:
            name = f"signal {-first.exitcode}"
        what = f"was killed by {name}"
    else:
        what = f"exited with code {first.exitcode}"
    raise MonetEditError(f"rank {first.local_rank} {what}; every rank stopped and no output was written "
                         f"(re-run with --resume to keep the completed shards)")


def error_prefix() -> str:
    """'rank R: ' inside a multi-rank job, so each line says which rank failed."""
    return f"rank {os.environ.get('RANK', '?')}: " if launched() else ""
