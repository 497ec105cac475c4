"""A stage of residual blocks (R(2+1)D's `layer1`..`layer4`) run in the kernels' layout from block to block.

Run module by module, every torchvision BasicBlock copies its input into the padded layout, writes fresh output
tensors (page-faulted in on every call), and adds the residual and applies the ReLU in two more passes over the
activation. `SparseResidualStage` keeps the stage's activation in one flat padded buffer: each conv writes straight
into the layout the next one reads (`run_into`), and the block's last conv adds the residual and applies the ReLU in
its output write, in place over the block input it replaces (the block's first conv has read it by then).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.video.resnet import BasicBlock, VideoResNet

from . import scratch
from ._ext import load_kernels
from .chain import SparseConvPair, run_into
from .dense_paths import KERNEL
from .layout import SLACK, flat_layout, interior
from .modules import AutoConv3d, SparseConv3d
from .surgery import set_submodule


def block_convs(block: nn.Module) -> list[SparseConv3d] | None:
    """The sparse convs of a BasicBlock's conv1 and conv2 in the order they run, or None when those hold anything
    else (an unfolded BatchNorm, an unfused ReLU, an unpruned conv) or conv2 ends in a ReLU of its own."""
    if type(block) is not BasicBlock or not isinstance(block.relu, nn.ReLU):
        return None
    convs: list[SparseConv3d] = []
    for part in (block.conv1, block.conv2):
        for m in part.modules():
            if isinstance(m, SparseConv3d):
                convs.append(m)
            elif not isinstance(m, (nn.Sequential, nn.Identity, SparseConvPair)):
                return None
    if not convs or convs[-1].relu:
        return None
    return convs


class SparseResidualStage(nn.Sequential):
    """The same blocks (same names and parameters) with a forward that keeps the activation in the kernels' flat
    layout (`flat_layout(dims, padding of the blocks' first conv)`) from the stage's first block to its last.
    Without the kernels it runs the blocks one by one."""

    def __init__(self, stage: nn.Sequential) -> None:
        if not can_fuse_stage(stage):
            raise ValueError("SparseResidualStage needs BasicBlocks of sparse convs only (see can_fuse_stage)")
        super().__init__(*stage)
        convs = [block_convs(b) for b in stage]
        self.block_conv_lists = convs
        self.pad = convs[-1][0].padding

    def _head_reads_layout(self, i: int) -> bool:
        """Block i's input is the stage's activation itself, which its first conv reads in place (no downsample,
        a stride-1 first conv with the stage's padding)."""
        head = self.block_conv_lists[i][0]
        return self[i].downsample is None and head.stride == (1, 1, 1) and head.padding == self.pad

    def can_enter_from(self, conv: nn.Module) -> bool:
        """`conv` (with its ReLU) can write its output straight into this stage's layout (`forward(x, entry=conv)`):
        a stride-1 sparse conv feeding a first block whose head reads that layout in place."""
        return (isinstance(conv, SparseConv3d) and conv.stride == (1, 1, 1) and self._head_reads_layout(0)
                and conv.out_channels == self.block_conv_lists[0][0].in_channels)

    def forward(self, x: torch.Tensor, entry: SparseConv3d | None = None) -> torch.Tensor:
        """The stage on `x`; with `entry` (see `can_enter_from`), on `relu(entry(x))`, which `entry` writes straight
        into the stage's layout (no output tensor of its own, no copy into the layout)."""
        if not runs_in_layout(x):
            return super().forward(torch.relu(entry.forward_torch(x)) if entry is not None else x)
        y, buf = self.run_in_layout(x, entry)
        y = y.contiguous()  # never hand out scratch
        scratch.SCRATCH.give(buf)
        return y

    def run_in_layout(self, x: torch.Tensor, entry: SparseConv3d | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` with the kernels (`runs_in_layout(x)`), leaving the output where it is: (view of the data
        positions of a SCRATCH buffer, that buffer), for a caller that reads the view and then gives the buffer back
        (`StemIntoStageVideoResNet`: the next stage reads it, saving the stage's copy out of its layout)."""
        ext = load_kernels()
        n = x.shape[0]
        act = None  # (buffer, channels, dims, grid, per-channel length) of the activation between blocks
        packed_head = None  # (buffer, ctx): the next head's packed input, written with the stage buffer
        if entry is not None:
            ebuf, ectx = entry.prepare(x)
            c, dims = entry.out_channels, ectx.outd
            grid, s = flat_layout(dims, self.pad)
            buf = scratch.SCRATCH.take_padded(n, c, grid, s, self.pad, dims, x, SLACK)[0]
            entry.write(ext, ebuf, ectx, buf, grid, self.pad, s, relu=True)
            scratch.SCRATCH.give(ebuf)
            act = (buf, c, dims, grid, s)
        for i, (block, convs) in enumerate(zip(self, self.block_conv_lists)):
            head = convs[0]
            if act is None or block.downsample is not None:  # enter the layout: residual placed, head prepared
                xd = x if act is None else interior(act[0], n, act[1], act[3], act[4], self.pad, act[2])
                res = block.downsample(xd) if block.downsample is not None else xd
                c, dims = res.shape[1], tuple(res.shape[2:])
                grid, s = flat_layout(dims, self.pad)
                buf, data = scratch.SCRATCH.take_padded(n, c, grid, s, self.pad, dims, res, SLACK)
                data.copy_(res)
                if self._head_reads_layout(i):
                    hbuf, hctx, own = buf, head.layout_ctx(n, dims, grid, s), False
                else:
                    (hbuf, hctx), own = head.prepare(xd), True
                if act is not None:
                    scratch.SCRATCH.give(act[0])
                act = (buf, c, dims, grid, s)
            elif packed_head is not None:  # the stage buffer's packed copy the block before wrote for this head
                (hbuf, hctx), own = packed_head, True
            else:  # the block input is the stage buffer, already in the head's layout
                hbuf, hctx, own = act[0], head.layout_ctx(n, act[2], act[3], act[4]), False
            for conv, nxt in zip(convs, convs[1:]):
                nbuf, nctx = run_into(ext, conv, hbuf, hctx, nxt)
                if own:
                    scratch.SCRATCH.give(hbuf)
                hbuf, hctx, own = nbuf, nctx, True
            packed_head = None
            nh = self.block_conv_lists[i + 1][0] if i + 1 < len(self) else None
            if nh is not None and nh.precision != "fp32" and self._head_reads_layout(i + 1):
                # the next head's packed input too, from the same output write (no packing pass of its own)
                nctx = nh.layout_ctx(n, act[2], act[3], act[4], packed=True)
                packed_head = (nh.take_packed_input(nctx, act[2], self.pad), nctx)
            convs[-1].write(ext, hbuf, hctx, act[0], act[3], self.pad, act[4], relu=True, accumulate=True,
                            pack=packed_head[1].plan if packed_head else None,
                            pack_into=packed_head[0] if packed_head else None)
            if own:
                scratch.SCRATCH.give(hbuf)
        return interior(act[0], n, act[1], act[3], act[4], self.pad, act[2]), act[0]


def runs_in_layout(x: torch.Tensor) -> bool:
    """A SparseResidualStage runs `x` in the kernels' layout (else block by block in PyTorch)."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and load_kernels() is not None


def can_fuse_stage(stage: nn.Module) -> bool:
    """A Sequential of BasicBlocks of sparse convs whose blocks after the first keep the shape (no downsample,
    stride-1 first conv) and whose first convs share one padding (the layout of the activation between blocks)."""
    if not isinstance(stage, nn.Sequential) or len(stage) == 0:
        return False
    convs = [block_convs(b) for b in stage]
    if any(c is None for c in convs):
        return False
    pads = {c[0].padding for c in convs}
    return len(pads) == 1 and all(b.downsample is None and c[0].stride == (1, 1, 1)
                                  for b, c in zip(list(stage)[1:], convs[1:]))


def fuse_residual_stages(model: nn.Module) -> int:
    """Replace every fusable stage of residual blocks (`can_fuse_stage`) by a `SparseResidualStage`; the count."""
    count = 0
    for name, mod in list(model.named_modules()):
        if type(mod) is nn.Sequential and can_fuse_stage(mod):
            set_submodule(model, name, SparseResidualStage(mod))
            count += 1
    return count


class StemIntoStageVideoResNet(VideoResNet):
    """torchvision's VideoResNet (same modules, same state_dict) whose stem hands its last conv to `layer1`, which
    writes that conv's output straight into its own layout: the stem's last output tensor and the stage's copy of it
    into the layout are saved (a gain at batch 8, none at batch 1: docs/bench/history.md). Made by
    `fuse_stem_into_stage`."""

    def stem_entry(self) -> tuple[list[nn.Module], SparseConv3d | None]:
        """(the stem's modules the stem runs itself, the conv layer1 runs for it or None): a path forced on the last
        conv afterwards (`AutoConv3d.mode` other than "kernel") is honoured by running the whole stem as usual."""
        mods = _stem_modules(self)
        if mods[-1].mode not in (None, KERNEL):
            return mods, None
        return mods[:-1], mods[-1].kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, entry = self.stem_entry()
        for m in head:
            x = m(x)
        if not runs_in_layout(x):
            x = self.layer4(self.layer3(self.layer2(self.layer1(x, entry=entry))))
            return self.fc(self.avgpool(x).flatten(1))
        # stage to stage, a fused stage's output is read where it lies, then its buffer goes back
        x, buf = self.layer1.run_in_layout(x, entry)
        for stage in (self.layer2, self.layer3, self.layer4):
            y, nbuf = stage.run_in_layout(x) if isinstance(stage, SparseResidualStage) else (stage(x), None)
            if buf is not None:
                scratch.SCRATCH.give(buf)
            x, buf = y, nbuf
        if buf is not None:
            x = x.contiguous()
            scratch.SCRATCH.give(buf)
        return self.fc(self.avgpool(x).flatten(1))


def fuse_stem_into_stage(model: nn.Module) -> bool:
    """Make a VideoResNet whose stem ends in an unpruned conv with its ReLU fused (an AutoConv3d with the kernel
    available) and whose `layer1` is a SparseResidualStage it can enter a `StemIntoStageVideoResNet`; True if so."""
    if type(model) is not VideoResNet or not isinstance(model.layer1, SparseResidualStage):
        return False
    mods = _stem_modules(model)
    last = mods[-1] if mods else None
    if not (isinstance(last, AutoConv3d) and last.relu and last.mode is None and last.kernel is not None
            and model.layer1.can_enter_from(last.kernel)):
        return False
    if not all(isinstance(m, (nn.Conv3d, AutoConv3d, SparseConv3d, nn.ReLU)) for m in mods[:-1]):
        return False
    model.__class__ = StemIntoStageVideoResNet
    return True


def _stem_modules(model: nn.Module) -> list[nn.Module]:
    """The stem's modules that do something (folded BatchNorms and fused ReLUs are Identity)."""
    return [m for m in model.stem.children() if not isinstance(m, nn.Identity)]
