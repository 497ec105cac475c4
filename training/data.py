"""Data loaders for training: deterministic per-epoch order, resumable mid-epoch, failed samples counted."""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import is_distributed


class FailuresAsRecords(Dataset):
    """Turns a sample that fails to load into a marker, so the batch carries the failure to the log instead of
    crashing a worker or being silently dropped.

    With `augment_seed` = (seed, epoch), each sample's random draws (crop, flip, frame offsets) come from a
    generator seeded by (seed, epoch, index) alone: whichever worker loads it, and whatever was loaded before, it
    is augmented the same way, so a run resumed inside an epoch with any --workers sees the same clips."""

    def __init__(self, dataset: Dataset, augment_seed: tuple[int, int] | None = None) -> None:
        self.dataset, self.augment_seed = dataset, augment_seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            if self.augment_seed is None:
                return self.dataset[i]
            return self._seeded(i)
        except Exception as e:  # any decode error: reported by collate, counted by the trainer
            return ("__failed__", i, f"{type(e).__name__}: {e}")

    def _seeded(self, i: int):
        seed = np.random.SeedSequence([self.augment_seed[0] & 0xFFFFFFFF, self.augment_seed[1], i])
        torch_seed, py_seed = (int(v) for v in seed.generate_state(2, np.uint64))
        state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):  # the caller's stream (dropout, in workers=0) is untouched
                torch.manual_seed(torch_seed)
                random.seed(py_seed)
                return self.dataset[i]
        finally:
            random.setstate(state)


def collate_with_failures(batch):
    is_failed = [isinstance(b[0], str) and b[0] == "__failed__" for b in batch]
    ok = [b for b, f in zip(batch, is_failed) if not f]
    failed = [(b[1], b[2]) for b, f in zip(batch, is_failed) if f]
    if ok:
        clips = torch.stack([b[0] for b in ok])
        labels = torch.as_tensor([int(b[1]) for b in ok])
        vidx = torch.as_tensor([int(b[2]) for b in ok])
    else:
        clips, labels, vidx = None, None, None
    return clips, labels, vidx, failed


class EpochSampler(Sampler[int]):
    """This rank's indices for one epoch: a permutation seeded by (seed, epoch), sharded across ranks, with the
    first `skip` indices dropped when resuming inside an epoch."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world: int, skip: int = 0,
                 pad: bool = True) -> None:
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if pad and world > 1:  # training: every rank takes the same number of steps
            per = -(-n // world)
            order = (order * 2)[: per * world]
        self.indices = order[rank::world][skip:]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _ignore_stop_signals(worker_id: int) -> None:
    """In each loader worker: SIGINT and SIGTERM, which a scheduler sends to the whole process group, are the main
    process's to handle (it saves last.pth and stops the workers itself); a worker killed by them would make
    PyTorch raise in the main process before it could save. The worker starts with them blocked (see
    `StopSafeLoader`), so one that arrives before this runs stays pending and is discarded here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


class StopSafeLoader(DataLoader):
    """Starts its workers with SIGINT/SIGTERM blocked, closing the window between a worker's fork and its
    `_ignore_stop_signals`; the main process gets a signal that arrived meanwhile as soon as they are started."""

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def make_loader(dataset: Dataset, *, batch_size: int, workers: int, train: bool, seed: int, epoch: int,
                rank: int = 0, world: int = 1, skip_batches: int = 0) -> DataLoader:
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, epoch=epoch, rank=rank, world=world,
                           skip=skip_batches * batch_size, pad=train)
    g = torch.Generator().manual_seed(seed * 7919 + epoch)  # worker seeds: deterministic per epoch
    items = FailuresAsRecords(dataset, (seed, epoch) if train else None)
    return StopSafeLoader(items, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate_with_failures, drop_last=False, generator=g,
                          worker_init_fn=_ignore_stop_signals if workers > 0 else None,
                          persistent_workers=False, pin_memory=torch.cuda.is_available() and not is_distributed())
