"""From a pruned Conv3d weight and its mask to the work lists the sparse kernel runs.

The output filters are cut into sharing groups of at most 8 filters (the register block of the kernel). Within a
group and one block of input channels, filters whose kept (channel, tap) sets are identical form a task that
shares one pair list (KGC, KGRC, KGS and blk-vanilla groups share exactly; KGR rows share per input block); a
block whose filters all differ (irregular) is run as the union of their pairs instead when that is cheaper. Tasks
of a group with the same filters are merged across input blocks. Up to CHMAX filters (several groups) form a chunk,
one accumulator tile of the kernel. All-zero filters are never computed (their output is the bias) and all-zero
input channels never appear in any pair list. `kernel_plan` adds what depends on the input geometry (where each
pair reads, and the cache-blocked order the kernel runs a chunk's pairs in) and gives the `KernelPlan` the C++
kernel reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .surgery import kept_mask

MAX_G = 8  # filters per task (plan.h, the register kernels' accumulator rows)
CHUNKS = (8, 16, 32)  # filter spans build_plan tries for tasks (kernel groups of these sizes)
CHMAX = 64  # rows of the kernel's accumulator tile (plan.h P3D_CHMAX)
TASK_OVERHEAD = 16.0
TILE = 192  # output positions per work unit (plan.h P3D_TILE)
L1_BUDGET = 16 * 1024  # bytes of input one pair segment may touch per tile (half of a 32 KiB L1)
SEG_ALIGN = 8
L2_BUDGET = 192 * 1024  # bytes of input a channel superblock may touch per tile (well within a 512 KiB L2)


@dataclass
class ConvPlan:
    """Geometry-independent work lists of one convolution (numpy arrays, flattened for the C++ kernel)."""

    cout: int
    cin: int
    kernel: tuple[int, int, int]
    kept_filters: np.ndarray  # bool [cout]
    kept_channels: np.ndarray  # bool [cin]
    chunk_fstart: np.ndarray  # int32 [nchunks+1]
    chunk_filters: np.ndarray  # int32: output channel of each chunk row
    chunk_tstart: np.ndarray  # int32 [nchunks+1]
    task_G: np.ndarray  # int32 [ntasks]
    task_rows: np.ndarray  # int32 [ntasks*8]
    task_pstart: np.ndarray  # int64 [ntasks+1]
    task_wstart: np.ndarray  # int64 [ntasks]
    pair_c: np.ndarray  # int64 input channel of each pair
    pair_tap: np.ndarray  # int64 kernel tap (dt*kh*kw + dh*kw + dw) of each pair
    weights: np.ndarray  # float32, per task [npairs, G]

    @property
    def computed_macs_per_position(self) -> int:
        """Multiply-adds per output position the kernel runs (pairs x filters sharing them)."""
        n = np.diff(self.task_pstart)
        return int((n * self.task_G).sum())


def _cost(npairs: int, g: int) -> float:
    return npairs * max(g, 1.5) + TASK_OVERHEAD * max(1, -(-g // MAX_G))


def _chunk_tasks(m: np.ndarray, block: int, union_only: bool) -> tuple[dict, float]:
    """m: bool [g, cin, K] of one chunk. Returns ({rows tuple: [flat (channel*K + tap) index arrays]}, cost)."""
    g, cin, k = m.shape
    nb = -(-cin // block)
    if nb * block != cin:
        m = np.concatenate([m, np.zeros((g, nb * block - cin, k), bool)], 1)
    sub_all = m.reshape(g, nb, block * k)
    nz_all = sub_all.any(2)  # [g, nb]
    union_all = sub_all.any(0)  # [nb, L]
    # blocks whose non-empty rows all keep the same pairs (every kernel-group type): one task, no search
    same = ((sub_all == union_all[None]) | ~nz_all[..., None]).all(axis=(0, 2))
    merged: dict[tuple[int, ...], list[np.ndarray]] = {}
    cost = 0.0
    for b in np.flatnonzero(nz_all.any(0)):
        b0 = int(b) * block
        rows = np.flatnonzero(nz_all[:, b])
        union = union_all[b]
        u_cost = _cost(int(union.sum()), len(rows))
        if same[b] or union_only:
            entries = [(tuple(int(r) for r in rows), union)]
            cost += u_cost
        else:
            sub = sub_all[:, b]
            groups: dict[bytes, list[int]] = {}
            for r in rows:
                groups.setdefault(sub[r].tobytes(), []).append(int(r))
            e_cost = sum(_cost(int(sub[rs[0]].sum()), len(rs)) for rs in groups.values())
            if u_cost <= e_cost:
                entries = [(tuple(int(r) for r in rows), union)]
                cost += u_cost
            else:
                entries = [(tuple(rs), sub[rs[0]]) for rs in groups.values()]
                cost += e_cost
        for rs, pat in entries:
            merged.setdefault(rs, []).append(np.flatnonzero(pat) + b0 * k)
    return merged, cost


def build_plan(weight: torch.Tensor, mask: torch.Tensor | None = None, *, chunk: int | None = None, block: int = 4,
               union_only: bool = False) -> ConvPlan:
    """Work lists for `weight * mask` ([Cout, Cin, kt, kh, kw]); `mask=None` means the weight's nonzeros.

    A chunk is the span of filters whose rows may share a task; `chunk=None` tries CHUNKS and keeps the cheapest
    plan (kernel groups of 16 or 32 filters keep 8 or 16 of them per channel block: a chunk of the group's size
    gives tasks of 8 rows, and 16-row AMX tiles two tasks with the same pairs, where 8-filter chunks cut them in
    pieces of about 4)."""
    w = weight.detach().float().cpu()
    mk = kept_mask(w, mask)
    w = w * mk
    cout, cin = w.shape[:2]
    kernel = tuple(int(s) for s in w.shape[2:])
    k = int(np.prod(kernel))
    mnp = mk.reshape(cout, cin, k).numpy()
    wnp = w.reshape(cout, cin * k).numpy()
    kept_f = mnp.any((1, 2))
    kept_c = mnp.any((0, 2))

    def chunking(filters_lists):
        out, total, macs = [], 0.0, 0
        for fl in filters_lists:
            tasks, c = _chunk_tasks(mnp[fl], block, union_only)
            out.append((fl, tasks))
            total += c
            macs += sum(len(rows) * sum(len(p) for p in parts) for rows, parts in tasks.items())
        return out, total, macs

    kept_idx = np.flatnonzero(kept_f)
    best = None  # (cost, macs, chunk size, chunks)
    for size in ((chunk,) if chunk else CHUNKS):
        size = max(1, min(size, CHMAX))
        by_group = [np.array([f for f in range(p, min(p + size, cout)) if kept_f[f]], dtype=np.int64)
                    for p in range(0, cout, size)]
        options = [chunking([fl for fl in by_group if len(fl)])]
        if len(kept_idx) < cout:  # filters were dropped: packing the kept ones densely may share better
            options.append(chunking([kept_idx[i:i + size] for i in range(0, len(kept_idx), size)]))
        for chunks, cost, macs in options:
            # but packing mixes kernel groups, whose union pair lists the cost model may then prefer: never take
            # more multiply-adds than the groups as pruned (a structured mask is computed exactly)
            if best is None or (macs <= best[1] and cost < best[0]):
                best = (cost, macs, size, chunks)
    _, _, chunk, chunks = best

    fstart, filters, tstart = [0], [], [0]
    task_g, task_rows, pstart, wstart = [], [], [0], []
    pair_flat, wparts = [], []
    wpos = 0
    per_chunk = max(1, CHMAX // chunk)  # sharing groups run together on one accumulator tile (see kernel_plan)
    for c0 in range(0, len(chunks), per_chunk):
        base = len(filters)
        for fl, tasks in chunks[c0:c0 + per_chunk]:
            row0 = len(filters) - base
            filters.extend(int(f) for f in fl)
            for all_rows, parts in tasks.items():
                flat = np.sort(np.concatenate(parts))
                # a task holds at most MAX_G rows (the register kernels' accumulators): more rows sharing the pairs
                # become consecutive tasks with the same pairs (twins, which AMX multiplies in one 16-row tile)
                for r0 in range(0, len(all_rows), MAX_G):
                    rows = all_rows[r0:r0 + MAX_G]
                    g = len(rows)
                    task_g.append(g)
                    task_rows.extend([row0 + r for r in rows] + [0] * (MAX_G - g))
                    pair_flat.append(flat)
                    pstart.append(pstart[-1] + len(flat))
                    wstart.append(wpos)
                    wt = wnp[fl[list(rows)]][:, flat].T  # [npairs, g]
                    wparts.append(np.ascontiguousarray(wt, dtype=np.float32).reshape(-1))
                    wpos += wt.size
        fstart.append(len(filters))
        tstart.append(len(task_g))
    dropped = np.flatnonzero(~kept_f)
    for i in range(0, len(dropped), CHMAX):  # output = bias only, no work
        filters.extend(int(f) for f in dropped[i:i + CHMAX])
        fstart.append(len(filters))
        tstart.append(len(task_g))
    flat = np.concatenate(pair_flat) if pair_flat else np.zeros(0, np.int64)
    return ConvPlan(
        cout=cout, cin=cin, kernel=kernel, kept_filters=kept_f, kept_channels=kept_c,
        chunk_fstart=np.array(fstart, np.int32), chunk_filters=np.array(filters, np.int32),
        chunk_tstart=np.array(tstart, np.int32), task_G=np.array(task_g, np.int32),
        task_rows=np.array(task_rows, np.int32), task_pstart=np.array(pstart, np.int64),
        task_wstart=np.array(wstart, np.int64), pair_c=(flat // k).astype(np.int64),
        pair_tap=(flat % k).astype(np.int64),
        weights=np.concatenate(wparts) if wparts else np.zeros(1, np.float32))


class KernelPlan(NamedTuple):
    """What the C++ kernel runs for one conv on one input geometry: the conv's work lists (from its `ConvPlan`),
    where each pair reads, and the order it runs them in.

    The kernel reads these fields by name (`P3D_PLAN_ARRAYS` and `P3D_PLAN_SCALARS` in csrc/plan.h list them, with
    their dtypes). A chunk's work is cut into pieces (a task's pairs on a few input channels) and run superblock by
    superblock of input channels: each piece's rows of the tile stay in L1 while every filter pass and position
    vector goes over them, and each superblock's rows stay in L2 while every task of the chunk reads them.
    """

    chunk_fstart: torch.Tensor  # int32 [nchunks+1] into chunk_filters
    chunk_filters: torch.Tensor  # int32: output channel of each chunk row
    chunk_pcstart: torch.Tensor  # int32 [nchunks+1] into the pieces
    piece_task: torch.Tensor  # int32 [npieces]
    piece_range: torch.Tensor  # int64 [npieces, 2]: pairs [begin, end) of the piece
    piece_last: torch.Tensor  # int32 [npieces]: bit g set if the piece is the last of its chunk to add to task row g
    task_G: torch.Tensor  # int32 [ntasks]
    task_rows: torch.Tensor  # int32 [ntasks*8]
    task_pstart: torch.Tensor  # int64 [ntasks+1] into pair_off
    task_wstart: torch.Tensor  # int64 [ntasks] into weights
    pair_off: torch.Tensor  # int64 [npairs]: input offset relative to the sample base
    weights: torch.Tensor  # float32, shares memory with ConvPlan.weights (bf16, int8: packed words, quant.pack_plan)
    prefetch: int  # words ahead the kernel prefetches each pair's row (the thread's next tile), or 0
    # reduced precision (compact.quant): the input packing and the int8 output scaling; fp32 plans keep the defaults
    row_scale: torch.Tensor = torch.zeros(0)  # float32 [Cout] (int8)
    row_comp: torch.Tensor = torch.zeros(0, dtype=torch.int32)  # int32 [Cout] (int8)
    precision: int = 0  # 0 fp32, 1 bf16, 2 int8 (plan.h P3D_FP32 ...)
    in_chan_stride: int = 0  # floats per channel plane of the fp32 input the kernel call packs
    in_vchannels: int = 0  # channel planes per sample of that input
    in_inv_scale: float = 0.0  # int8: 1 / input scale
    in_zero: int = 0  # int8: input zero point
    weight_bits: int = 8  # int8: 8, or 7 (|w| <= 63, quant.quantize_weight)
    # bf16, int8 on AMX tiles (quant.with_tiles): each task's words again as 8 rows (filters) of np + 16 words
    weights_t: torch.Tensor = torch.zeros(0)  # float32-typed words
    task_tstart: torch.Tensor = torch.zeros(0, dtype=torch.int64)  # int64 [ntasks] into weights_t
    task_twin: torch.Tensor = torch.zeros(0, dtype=torch.int32)  # int32 [ntasks]: task t+1 reads the same pairs


def tile_channels(kernel: tuple[int, int, int], stride: tuple[int, int, int], grid: tuple[int, int, int],
                  chan_stride: int, budget: int) -> int:
    """Input channels whose rows of one output tile fit in `budget` bytes."""
    kt, kh, kw = kernel
    nph = stride[0] * stride[1] * stride[2]
    rows = -(-kt // stride[0])
    per_phase = min(chan_stride, rows * (TILE + (-(-kh // stride[1]) - 1) * grid[2] + -(-kw // stride[2])))
    return max(1, budget // (4 * nph * per_phase))


def piece_schedule(plan: ConvPlan, buffer_channel: np.ndarray, seg_channels: int,
                   sb_channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chunk_pcstart, piece_task, piece_range, piece_last): each task cut every `seg_channels` buffer channels,
    each chunk's pieces ordered by superblock of `sb_channels` channels, then segment, then task; piece_last marks
    the rows a piece completes, which the kernel writes out right after it (spreading the output stores over the
    unit's compute instead of one burst at its end)."""
    n = len(plan.pair_c)
    nchunks = len(plan.chunk_fstart) - 1
    if n == 0:
        return (torch.zeros(nchunks + 1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                torch.zeros((0, 2), dtype=torch.int64), torch.zeros(0, dtype=torch.int32))
    counts = np.diff(plan.task_pstart)
    task = np.repeat(np.arange(len(counts)), counts)
    seg = buffer_channel // seg_channels
    starts = np.flatnonzero(np.r_[True, (task[1:] != task[:-1]) | (seg[1:] != seg[:-1])])
    ends = np.r_[starts[1:], n]
    ptask = task[starts]
    pchunk = np.repeat(np.arange(nchunks), np.diff(plan.chunk_tstart))[ptask]
    psb = buffer_channel[starts] // (seg_channels * max(1, sb_channels // seg_channels))
    pseg = buffer_channel[starts] // seg_channels
    # every task on one segment runs back to back, so the segment's rows are read from L2 once per chunk
    order = np.lexsort((ptask, pseg, psb, pchunk))
    pcstart = np.searchsorted(pchunk[order], np.arange(nchunks + 1)).astype(np.int32)
    rng = np.stack([starts[order], ends[order]], 1).astype(np.int64)
    otask = ptask[order]
    # every (piece, g) in run order with its chunk row; the last occurrence of each (chunk, row) completes it
    g_of = np.arange(MAX_G)
    G = plan.task_G[otask]
    piece_i, g = np.nonzero(g_of[None, :] < G[:, None])
    key = pchunk[order][piece_i].astype(np.int64) * CHMAX + plan.task_rows[otask[piece_i] * MAX_G + g]
    last = np.zeros(len(otask), np.int32)
    rev = len(key) - 1 - np.unique(key[::-1], return_index=True)[1]
    np.bitwise_or.at(last, piece_i[rev], (1 << g[rev]).astype(np.int32))
    return (torch.from_numpy(pcstart), torch.from_numpy(otask.astype(np.int32)), torch.from_numpy(rng),
            torch.from_numpy(last))


def kernel_plan(plan: ConvPlan, channel_index: np.ndarray, stride: tuple[int, int, int], grid: tuple[int, int, int],
                chan_stride: int, whole_tasks: bool = False) -> KernelPlan:
    """`plan` for a virtual input laid out as [channel][phase][grid] flat planes: where every pair reads, the piece
    schedule, and the plan's own arrays as tensors.

    `channel_index` maps original input channels to their position in the buffer; `stride` phases: input
    (padded) position s*i + r lives in phase r at i, so tap d reads phase d % s at offset d // s. `whole_tasks`: one
    piece per task (the AMX kernel, whose tile sums pay a fixed cost per piece, keeps them in tiles across it).
    """
    kt, kh, kw = plan.kernel
    st, sh, sw = stride
    _, hq, wq = grid
    tap = plan.pair_tap
    dt, dh, dw = tap // (kh * kw), (tap // kw) % kh, tap % kw
    phase = ((dt % st) * sh + dh % sh) * sw + dw % sw
    vc = channel_index[plan.pair_c] * (st * sh * sw) + phase
    off = vc * chan_stride + (dt // st) * hq * wq + (dh // sh) * wq + dw // sw
    # whole channel blocks per piece: a kernel-group task spans SEG_ALIGN channels, and shorter pieces cost more in
    # accumulator traffic than they save in L1 misses
    seg = max(1, tile_channels(plan.kernel, stride, grid, chan_stride, L1_BUDGET) // SEG_ALIGN) * SEG_ALIGN
    sb = tile_channels(plan.kernel, stride, grid, chan_stride, L2_BUDGET)
    if whole_tasks:
        seg = sb = len(channel_index) * stride[0] * stride[1] * stride[2] + 1
    sched = piece_schedule(plan, channel_index[plan.pair_c], seg, sb)
    # taps along time only read rows whole planes apart, more streams than the hardware prefetchers follow: the
    # kernel prefetches every line of each row for the thread's next tile (a gain where the input outgrows L3,
    # none on 3x3 taps, which it leaves alone: docs/bench/history.md)
    prefetch = TILE if kh * kw == 1 else 0
    pcstart, ptask, prange, plast = sched
    t = torch.from_numpy
    return KernelPlan(
        chunk_fstart=t(plan.chunk_fstart), chunk_filters=t(plan.chunk_filters), chunk_pcstart=pcstart,
        piece_task=ptask, piece_range=prange, piece_last=plast, task_G=t(plan.task_G), task_rows=t(plan.task_rows),
        task_pstart=t(plan.task_pstart), task_wstart=t(plan.task_wstart),
        pair_off=t(np.ascontiguousarray(off, dtype=np.int64)), weights=t(plan.weights), prefetch=prefetch)
