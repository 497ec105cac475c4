"""Reduced precision for the compact engine: bf16 and int8 convolutions over the same kernel-group plans.

bf16: weights and conv inputs rounded to bfloat16 (nearest even), products summed in fp32; AVX512_BF16's vdpbf16ps
where the CPU has it, else portable code with the same rounding.

int8: symmetric per-output-channel int8 weights (scale = max |w| / 127, or / 63 with 7-bit weights); uint8 conv
inputs with one scale and zero point per conv from calibration (zero 0 when calibration saw no negative input, e.g.
after a ReLU, else 128); exact int32 sums (AVX512_VNNI's vpdpbusd where the CPU has it; without it pmaddubsw on
7-bit weights, whose int16 pair sums cannot saturate, or the slower pmaddwd on 8-bit ones); then, in fp32,
`(sum - zero x kept weight sum) x (input scale x weight scale) + bias`, and the ReLU / residual as in fp32.

Between convs activations stay fp32 in the kernels' layouts (the fused bias, ReLU, residual and pooling of the fp32
engine are unchanged); each kernel call packs its input into K = 2 (bf16) or 4 (int8) channel planes interleaved per
32-bit word, the operand of the dot-product instructions (`pack_plan` rewrites the conv's plan for that layout:
the kept (channel, tap) pairs of a task that read the same word become one pair). `reference_conv` is the same
computation in PyTorch: bit-exact for int8, the pure-PyTorch path of `SparseConv3d`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .plan import TILE, ConvPlan, KernelPlan

log = logging.getLogger("prune3d.compact")

PRECISIONS = ("fp32", "bf16", "int8")
CODES = {"fp32": 0, "bf16": 1, "int8": 2}  # plan.h P3D_FP32, P3D_BF16, P3D_INT8
INT8_GATHER = 3  # plan.h P3D_INT8_GATHER
LANES = {"bf16": 2, "int8": 4}
# a packed input's channels per plane and element size (bytes), by plan precision code (plan.h)
PACKED_ELEMENTS = {CODES["bf16"]: (2, 2), CODES["int8"]: (4, 1), INT8_GATHER: (1, 1)}
PACKED_SLACK = 4 * (2 * TILE + 256)  # bytes a kernel call may read past the last position (ext.cpp pack_input)


def packed_per_sample(kp: KernelPlan, channels: int, chan_stride: int) -> int:
    """Per-sample stride of `kp`'s packed input, in the units its kernel loads (32-bit words of K channels; bytes
    for the gathered int8 plan's plain uint8 planes)."""
    k, _ = PACKED_ELEMENTS[kp.precision]
    return channels * chan_stride if k == 1 else -(-channels // k) * chan_stride
CALIBRATION_METHODS = ("minmax", "percentile")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


@dataclass(frozen=True)
class InputQuant:
    """uint8 = clamp(round(x / scale) + zero, 0, 255) for one conv's input."""

    scale: float
    zero: int

    @property
    def inv_scale(self) -> float:
        return float(np.float32(1.0) / np.float32(self.scale))


def input_quant(lo: float, hi: float) -> InputQuant:
    """The input quantization for an observed range [lo, hi]: unsigned (zero 0) when nothing negative was seen,
    else symmetric around zero point 128."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"calibration range [{lo}, {hi}] is not a range")
    if lo >= 0:
        return InputQuant(float(np.float32(hi / 255.0)) if hi > 0 else 1.0, 0)
    amax = max(-lo, hi)
    return InputQuant(float(np.float32(amax / 127.0)) if amax > 0 else 1.0, 128)


def quantize_input(x: torch.Tensor, q: InputQuant) -> torch.Tensor:
    """x as the kernels quantize it (uint8 values, as int32)."""
    inv = torch.tensor(q.inv_scale, dtype=torch.float32)
    return torch.clamp(torch.round(x.float() * inv).to(torch.int32) + q.zero, 0, 255)


WEIGHT_BITS = (8, 7)


def check_weight_bits(bits: int) -> int:
    if bits not in WEIGHT_BITS:
        raise ValueError(f"int8 weight bits {bits!r}: choose 8 or 7")
    return bits


def quantize_weight(w: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per output channel): symmetric, scale = max |w| / (2^(bits-1) - 1)."""
    qmax = (1 << (check_weight_bits(bits) - 1)) - 1
    w = w.detach().float()
    amax = w.abs().flatten(1).amax(1)
    scale = torch.where(amax > 0, amax / float(qmax), torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))), -qmax, qmax).to(torch.int8)
    return q, scale


def bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


@dataclass
class QuantState:
    """What one conv needs at a reduced precision: for int8 the input quantization, the int8 weight (the masked
    dense shape) and the per-filter output scale and zero-point term."""

    precision: str
    iq: InputQuant | None = None
    qweight: torch.Tensor | None = None
    row_scale: torch.Tensor | None = None  # float32 [Cout]: input scale x weight scale
    row_comp: torch.Tensor | None = None  # int32 [Cout]: zero x sum of the filter's int8 weights
    weight_bits: int = 8  # int8: 8, or 7 (|w| <= 63)


def quant_state(weight: torch.Tensor, precision: str, act_range: tuple[float, float] | None = None,
                weight_bits: int = 8) -> QuantState:
    """The QuantState of a conv with masked dense `weight` at `precision` (int8 needs `act_range`; its weights
    take `weight_bits`)."""
    check_precision(precision)
    if precision != "int8":
        return QuantState(precision)
    if act_range is None:
        raise ValueError("int8 needs the conv input's calibrated range")
    iq = input_quant(*act_range)
    qw, wscale = quantize_weight(weight, weight_bits)
    row_scale = torch.tensor(iq.scale, dtype=torch.float32) * wscale
    row_comp = (qw.flatten(1).sum(1, dtype=torch.int64) * iq.zero).to(torch.int32)
    return QuantState(precision, iq, qw, row_scale.contiguous(), row_comp.contiguous(), weight_bits)


def reference_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                   q: QuantState) -> torch.Tensor:
    """The conv with masked dense `weight` as the kernels compute it at `q.precision`, in PyTorch (no ReLU). int8
    (which uses `q.qweight`) is bit-exact: the integer sums are exact in float64, then the same float32 operations
    in the same order."""
    if q.precision == "fp32":
        return F.conv3d(x, weight, bias, stride, padding)
    if q.precision == "bf16":
        return F.conv3d(bf16_round(x), bf16_round(weight), bias, stride, padding)
    xq = (quantize_input(x, q.iq) - q.iq.zero).double()
    acc = F.conv3d(xq, q.qweight.double(), None, stride, padding)
    y = acc.float() * q.row_scale.view(1, -1, 1, 1, 1)
    return y + bias.view(1, -1, 1, 1, 1) if bias is not None else y


def plan_values(plan: ConvPlan, weight: torch.Tensor) -> np.ndarray:
    """`plan.weights` for another weight of the same conv: the value of `weight` at every (pair, filter) the plan
    computes, in the plan's order (per task, pair-major)."""
    k = int(np.prod(plan.kernel))
    wflat = weight.detach().float().reshape(plan.cout, plan.cin * k).numpy()
    counts = np.diff(plan.task_pstart)
    if counts.sum() == 0:
        return np.zeros_like(plan.weights)
    task_of_pair = np.repeat(np.arange(len(counts)), counts)
    pair, g, t = _pair_filters(task_of_pair, plan.task_G)
    chunk_of_task = np.repeat(np.arange(len(plan.chunk_tstart) - 1), np.diff(plan.chunk_tstart))
    filt = plan.chunk_filters[plan.chunk_fstart[chunk_of_task[t]] + plan.task_rows[t * 8 + g]]
    pos = plan.task_wstart[t] + (pair - plan.task_pstart[t]) * plan.task_G[t] + g
    out = np.zeros_like(plan.weights)
    out[pos] = wflat[filt, plan.pair_c[pair] * k + plan.pair_tap[pair]]
    return out


def _pair_filters(task_of_pair: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair, g, task) of every (pair, filter) of a plan whose pairs belong to `task_of_pair` (G filters a task)."""
    gp = G[task_of_pair].astype(np.int64)
    pair = np.repeat(np.arange(len(task_of_pair)), gp)
    g = np.arange(len(pair)) - np.repeat(np.cumsum(gp) - gp, gp)
    return pair, g, task_of_pair[pair]


def _words(kp: KernelPlan, task_of_pair: np.ndarray, new_of_pair: np.ndarray, lane: np.ndarray,
           new_task: np.ndarray, values: np.ndarray, precision: str,
           weight_bits: int = 8) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(task_pstart, task_wstart, weight words) of a packed plan: old pair p (weights `values` in `kp`'s order) goes
    to lane `lane[p]` of new pair `new_of_pair[p]`; `new_task`: the task of each new pair (task-major)."""
    G = kp.task_G.numpy().astype(np.int64)
    pstart, wstart = kp.task_pstart.numpy(), kp.task_wstart.numpy()
    ntask = len(G)
    task_pstart = np.searchsorted(new_task, np.arange(ntask + 1)).astype(np.int64)
    task_wstart = np.r_[0, np.cumsum(np.diff(task_pstart) * G)][:ntask].astype(np.int64)
    pair, g, t = _pair_filters(task_of_pair, G)
    src = wstart[t] + (pair - pstart[t]) * G[t] + g
    word = task_wstart[t] + (new_of_pair[pair] - task_pstart[t]) * G[t] + g
    nwords = max(int((np.diff(task_pstart) * G).sum()), 1)
    k = LANES[precision]
    if precision == "bf16":
        lanes_arr = np.zeros(nwords * k, np.int16)
        lanes_arr[word * k + lane[pair]] = torch.from_numpy(values[src]).to(torch.bfloat16).view(torch.int16).numpy()
    else:
        lanes_arr = np.zeros(nwords * k, np.int8)
        lanes_arr[word * k + lane[pair]] = plan_int8(values[src], weight_bits)
    return task_pstart, task_wstart, torch.from_numpy(lanes_arr.view(np.float32).copy())


def runs_on_tiles(precision: str) -> bool:
    """Whether the kernels run `precision` on AMX tiles on this CPU (kern_amx.cpp)."""
    from ._ext import load_kernels

    ext = load_kernels()
    return ext is not None and ext.has_tiles(precision)


TILE_ROWS, TILE_K = 8, 16  # kern_amx.cpp: filters per weight tile (MAX_G), words per tile row
# A tile product costs the same whatever part of it a task fills (its G of 8 rows, its words of each 16), so a conv
# runs on tiles only where its tasks fill at least this share; below it the dot-product kernel is faster (int8's
# vpdpbusd is cheap; bf16's vdpbf16ps is no faster than fp32 FMAs on such CPUs, tiles win at any fill):
# docs/bench/history.md.
TILE_MIN_FILL = {"bf16": 0.0, "int8": 0.6}


def tile_fill(kp: KernelPlan) -> float:
    """The share of the tile products' multiply-adds that are a task's (G filters x its words)."""
    n = np.diff(kp.task_pstart.numpy())
    done = float((np.ceil(n / TILE_K) * TILE_K * TILE_ROWS).sum())
    return float((n * kp.task_G.numpy()).sum()) / done if done else 0.0


def convs_on_tiles(model: nn.Module, precision: str) -> tuple[int, int]:
    """(convs of `model` whose `precision` plans run on AMX tiles, all its compact convs), after a forward."""
    from .modules import SparseConv3d

    convs = [m for m in model.modules() if isinstance(m, SparseConv3d)]
    on = sum(any(k[0] == precision and kp.weights_t.numel() > 0 for k, kp in m._kernel_plans.items()) for m in convs)
    return on, len(convs)


def with_tiles(kp: KernelPlan, precision: str) -> KernelPlan | None:
    """`kp` (a bf16 / int8 plan with one piece per task) with the AMX kernel's weight layout, or None where its tasks
    fill the tiles too little (TILE_MIN_FILL)."""
    if len(kp.pair_off) == 0 or tile_fill(kp) < TILE_MIN_FILL[precision]:
        return None
    G = kp.task_G.numpy().astype(np.int64)
    n = np.diff(kp.task_pstart.numpy()).astype(np.int64)
    # task t's words ([n][G], pair-major) as TILE_ROWS rows of n + TILE_K words, filter-major: a tile load of any
    # TILE_K consecutive pairs reads every filter's row at one stride; rows past G and words past n stay zero
    ld = n + TILE_K
    tstart = np.r_[0, np.cumsum(TILE_ROWS * ld)].astype(np.int64)
    # (+ the rows a 16-row load reads past the last task)
    out = np.zeros(int(tstart[-1]) + TILE_ROWS * int(ld.max()), np.uint32)
    ps = kp.task_pstart.numpy()
    pair, g, t = _pair_filters(np.repeat(np.arange(len(n)), n), G)
    local = pair - ps[t]
    words = kp.weights.numpy().view(np.uint32)
    out[tstart[t] + g * ld[t] + local] = words[kp.task_wstart.numpy()[t] + local * G[t] + g]
    # twins: task t+1 reads the very pairs of task t (its words follow t's 8 rows at the same stride, so one 16-row
    # tile holds both); the kernel runs them together where t+1's piece comes right after t's in one chunk
    off = kp.pair_off.numpy().reshape(-1, 4 if kp.precision == INT8_GATHER else 1)
    twin = np.zeros(len(n), np.int32)
    for i in np.flatnonzero(n[:-1] == n[1:]):
        twin[i] = np.array_equal(off[ps[i]:ps[i + 1]], off[ps[i + 1]:ps[i + 2]])
    return kp._replace(weights_t=torch.from_numpy(out.view(np.float32)), task_tstart=torch.from_numpy(tstart[:-1]),
                       task_twin=torch.from_numpy(twin))


def pack_plan(kp: KernelPlan, values: np.ndarray, q: QuantState, chan_stride: int, vchannels: int) -> KernelPlan:
    """`kp` (an fp32 plan on a layout of `vchannels` planes of `chan_stride` floats per sample) for the packed
    layout of `q.precision`: a piece's pairs that read the same word (same K-plane group, same offset) merged into
    one pair whose weight word holds each lane's weight (zero in lanes no pair reads). `values`: the weight of each
    (pair, filter) in `kp.weights`' order (`plan_values`)."""
    lanes = LANES[q.precision]
    off = kp.pair_off.numpy()
    vc, soff = off // chan_stride, off % chan_stride
    quad, lane = vc // lanes, vc % lanes
    prange = kp.piece_range.numpy()
    ptask = kp.piece_task.numpy().astype(np.int64)
    n = len(off)
    if n == 0:
        return kp._replace(precision=CODES[q.precision], in_chan_stride=chan_stride, in_vchannels=vchannels,
                           **_int8_fields(q))
    by_begin = np.argsort(prange[:, 0], kind="stable")
    piece = np.repeat(by_begin, (prange[:, 1] - prange[:, 0])[by_begin])  # piece of each pair
    # pieces of a task are consecutive sub-ranges of its pairs, tasks in order: sorting by (piece begin, word)
    # keeps the new pairs task-major with every piece contiguous
    order = np.lexsort((soff, quad, prange[piece, 0]))
    key_p, key_q, key_s = piece[order], quad[order], soff[order]
    first = np.r_[True, (key_p[1:] != key_p[:-1]) | (key_q[1:] != key_q[:-1]) | (key_s[1:] != key_s[:-1])]
    new_sorted = np.cumsum(first) - 1
    new = np.empty(n, np.int64)
    new[order] = new_sorted
    nnew = int(new_sorted[-1]) + 1
    new_piece = np.empty(nnew, np.int64)
    new_piece[new_sorted] = key_p
    task_pstart, task_wstart, words = _words(kp, ptask[piece], new, lane, ptask[new_piece], values, q.precision,
                                             q.weight_bits)
    cnt = np.bincount(new_piece, minlength=len(ptask))[by_begin]  # new pairs of each piece, in begin order
    piece_range = np.empty((len(ptask), 2), np.int64)
    piece_range[by_begin, 0] = np.cumsum(cnt) - cnt
    piece_range[by_begin, 1] = np.cumsum(cnt)
    t_ = torch.from_numpy
    return kp._replace(
        piece_range=t_(np.ascontiguousarray(piece_range)), task_pstart=t_(task_pstart), task_wstart=t_(task_wstart),
        pair_off=t_(np.ascontiguousarray((key_q[first] * chan_stride + key_s[first]).astype(np.int64))),
        weights=words, precision=CODES[q.precision], in_chan_stride=int(chan_stride), in_vchannels=int(vchannels),
        **_int8_fields(q))


GATHER_COST = 1.5  # a gathered pair's cost in channel-interleaved pairs: 8 byte/word unpacks per 16 dot products


def gather_plan(kp: KernelPlan, values: np.ndarray, q: QuantState, chan_stride: int, vchannels: int) -> KernelPlan:
    """`kp` for int8 over plain uint8 planes (P3D_INT8_GATHER): each piece's pairs taken four at a time, whatever
    their channels and taps (the kernel interleaves the four rows as it loads them), the last group padded with
    zero weights; `pair_off` holds four byte offsets per pair (the fp32 offsets: the planes keep their geometry)."""
    off = kp.pair_off.numpy()
    prange = kp.piece_range.numpy()
    ptask = kp.piece_task.numpy().astype(np.int64)
    n, npieces = len(off), len(ptask)
    by_begin = np.argsort(prange[:, 0], kind="stable")
    length = prange[:, 1] - prange[:, 0]
    ngroup = -(-length // 4)
    gstart = np.empty(npieces, np.int64)
    gstart[by_begin] = np.cumsum(ngroup[by_begin]) - ngroup[by_begin]
    total = int(ngroup.sum())
    piece = np.repeat(by_begin, length[by_begin])  # piece of each pair (pairs in order)
    local = np.arange(n) - prange[piece, 0]
    group, lane = gstart[piece] + local // 4, local % 4
    offs = np.repeat(off[prange[by_begin, 0]], 4 * ngroup[by_begin])  # padding lanes read the piece's first row
    offs[group * 4 + lane] = off
    group_task = np.repeat(ptask[by_begin], ngroup[by_begin])
    task_pstart, task_wstart, words = _words(kp, ptask[piece], group, lane, group_task, values, "int8",
                                             q.weight_bits)
    piece_range = np.stack([gstart, gstart + ngroup], 1).astype(np.int64)
    t_ = torch.from_numpy
    return kp._replace(
        piece_range=t_(np.ascontiguousarray(piece_range)), task_pstart=t_(task_pstart), task_wstart=t_(task_wstart),
        pair_off=t_(np.ascontiguousarray(offs[:4 * total], dtype=np.int64)),
        weights=words, precision=INT8_GATHER, in_chan_stride=int(chan_stride), in_vchannels=int(vchannels),
        **_int8_fields(q))


def int8_plan(kp: KernelPlan, values: np.ndarray, q: QuantState, chan_stride: int, vchannels: int) -> KernelPlan:
    """The cheaper of the two int8 plans: channel planes interleaved (full words where a task keeps whole runs of
    four channels at a tap: dense convs) or pairs gathered four at a time (scattered kept taps: KGC, KGRC, KGS)."""
    packed = pack_plan(kp, values, q, chan_stride, vchannels)
    if len(kp.pair_off) == 0:
        return packed
    gathered = gather_plan(kp, values, q, chan_stride, vchannels)
    return gathered if GATHER_COST * len(gathered.pair_off) / 4 < len(packed.pair_off) else packed


def plan_int8(v: np.ndarray, weight_bits: int = 8) -> np.ndarray:
    """int8 weight values carried as floats (exact integers in [-qmax, qmax], qmax = 2^(weight_bits-1) - 1: the
    7-bit kernels' sums are exact only within it) to int8."""
    qmax = (1 << (check_weight_bits(weight_bits) - 1)) - 1
    r = np.rint(v)
    if np.any(r != v) or np.any(np.abs(r) > qmax):
        raise ValueError(f"int8 plan values must be integers in [-{qmax}, {qmax}]")
    return r.astype(np.int8)


def _int8_fields(q: QuantState) -> dict:
    if q.precision != "int8":
        return {}
    return dict(row_scale=q.row_scale, row_comp=q.row_comp, in_inv_scale=q.iq.inv_scale, in_zero=int(q.iq.zero),
                weight_bits=int(q.weight_bits))


# ---- calibration -------------------------------------------------------------------------------------------------

class _Observer:
    """Range of one conv input over the calibration clips: min/max, or the mean over batches of the lower and upper
    `percentile` (a deterministic subsample of at most 2**20 values per batch)."""

    def __init__(self, method: str, percentile: float) -> None:
        self.method, self.percentile = method, percentile
        self.lo, self.hi, self.batches = [], [], 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().float().flatten()
        if self.method == "minmax":
            self.lo.append(float(x.min()))
            self.hi.append(float(x.max()))
        else:
            step = max(1, x.numel() // (1 << 20))
            s = x[::step]
            p = self.percentile / 100.0
            self.lo.append(float(torch.quantile(s, 1.0 - p)))
            self.hi.append(float(torch.quantile(s, p)))

    def range(self) -> tuple[float, float]:
        if self.method == "minmax":
            return min(self.lo), max(self.hi)
        return float(np.mean(self.lo)), float(np.mean(self.hi))


@torch.no_grad()
def calibrate(model: nn.Module, clips: Iterable[torch.Tensor], *, method: str = "minmax",
              percentile: float = 99.99) -> dict[str, list[float]]:
    """{conv name: [lo, hi]}: the range of every Conv3d's input over `clips` (batches [N, C, T, H, W]), run through
    `model` (the masked dense model, in eval mode). Deterministic for the same clips."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise ValueError(f"--calibrate-percentile {percentile}: give a percentile in (50, 100]")
    observers: dict[str, _Observer] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv3d):
            observers[name] = _Observer(method, percentile)
            hooks.append(m.register_forward_pre_hook(observers[name]))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in clips:
            model(x)
            seen += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("calibration got no clips")
    return {name: [float(v) for v in obs.range()] for name, obs in observers.items()}


def default_weight_bits() -> int:
    """int8 weight bits where none are asked for: 7 on a CPU whose kernels run int8 without a dot-product
    instruction (pmaddubsw is exact on 7-bit weights and about twice as fast as exact 8-bit code there; with
    8-bit weights its int16 pair sums could saturate), else 8."""
    from ._ext import load_kernels

    ext = load_kernels()
    return 7 if ext is not None and ext.isa() in ("avx2", "avx512") and not ext.has_dot_products("int8") else 8


def set_precision(model: nn.Module, precision: str, ranges: Mapping[str, list[float]] | None = None,
                  weight_bits: int | None = None) -> nn.Module:
    """Run every compact conv of `model` at `precision`; int8 needs `ranges` ({conv name: [lo, hi]} from
    `calibrate`) naming every one of them and quantizes the weights to `weight_bits` (8 or 7; None:
    `default_weight_bits()`). Returns the model."""
    from .modules import SparseConv3d

    check_precision(precision)
    convs = [m for m in model.modules() if isinstance(m, SparseConv3d)]
    if precision == "int8":
        if ranges is None:
            raise ValueError("int8 needs calibration: calibrate first (--calibrate N) or load a checkpoint with scales")
        missing = sorted({m.name for m in convs if m.name not in ranges})
        if missing:
            raise ValueError(f"int8: no calibrated range for conv {missing[0]}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                             + "; calibrate this model again")
    bits = check_weight_bits(default_weight_bits() if weight_bits is None else weight_bits)
    for m in convs:
        m.set_precision(precision, ranges.get(m.name) if ranges else None, bits)
    if precision != "fp32" and convs:
        _say_without_dot_products(precision, bits)
    return model


_SAID: set[str] = set()
DOT_PRODUCTS = {"bf16": "AVX512_BF16 (vdpbf16ps)", "int8": "AVX512_VNNI (vpdpbusd)"}


def _say_without_dot_products(precision: str, weight_bits: int = 8) -> None:
    """Once per precision (and int8 weight bits): the kernels run it without the CPU's dot-product instructions."""
    from ._ext import kernel_isa, load_kernels

    ext = load_kernels()
    key = f"{precision}{weight_bits if precision == 'int8' else ''}"
    if ext is None or ext.has_dot_products(precision) or key in _SAID:
        return
    _SAID.add(key)
    isa = kernel_isa()
    if precision == "int8" and isa in ("avx2", "avx512") and weight_bits == 7:
        how = (f"{isa} code with pmaddubsw on 7-bit weights (exact; --int8-weight-bits 8 keeps 8 bits, at or "
               "below fp32's speed)")
    elif precision == "int8" and isa in ("avx2", "avx512"):
        how = (f"{isa} code with vpmaddwd on 8-bit weights (exact, at or below fp32's speed; --int8-weight-bits 7 "
               "runs pmaddubsw, faster)")
    else:
        how = f"portable {isa} code (same results, slower than fp32: keep fp32 on this CPU)"
    log.warning("compact: this CPU has no %s for the %s kernels: they run %s", DOT_PRODUCTS[precision], precision,
                how)
