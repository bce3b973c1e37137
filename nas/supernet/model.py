"""The elastic network: one module holding the largest network's weights, any sub-network selectable.

Elastic dimensions (Once-for-All): kernel (shared largest kernel, centre crop followed by a learned per-layer
kernel transformation matrix, 7 -> 5 -> 3), expansion and width (the first channels of each tensor; run
`sort_channels()` so the first ones are the most important), depth (the first d blocks of a stage), SE (on/off,
squeeze width follows the expanded width) and resolution (the input is resized to `arch.resolution`).

`set_active(arch)` selects the sub-network `forward` runs; `extract(arch)` returns a standalone
`search_spaces.MBConvNet` built by `search_spaces.build(arch)` with the sub-network's weights copied in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import search_spaces as ss
from nas.kernels.training import depthwise_conv2d
from search_spaces.cost import se_channels
from search_spaces.model import ConvBNAct, MBConvNet, make_act


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, c: int) -> torch.Tensor:
    """Batch norm over the first `c` channels (running statistics of those channels are updated in place)."""
    assert bn.running_mean is not None and bn.running_var is not None
    return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c], bn.training,
                        0.1 if bn.momentum is None else bn.momentum, bn.eps)


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, index: slice | torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[index])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, name)
        t.data.copy_(t.data[order])


class ElasticPointwise(nn.Module):
    """1x1 convolution + batch norm using the first `cin` input and `cout` output channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, cout: int) -> torch.Tensor:
        return _bn(F.conv2d(x, self.conv.weight[:cout, : x.shape[1]]), self.bn, cout)


class ElasticDepthwise(nn.Module):
    """Depthwise conv + batch norm with an elastic kernel: the centre of the larger kernel, transformed.

    Going from kernel k to the next smaller k' crops the centre k' x k' and multiplies the flattened kernel by a
    learned k'^2 x k'^2 matrix shared by the layer's channels (initialised to the identity).
    """

    def __init__(self, channels: int, kernels: tuple[int, ...], stride: int):
        super().__init__()
        self.kernels = tuple(sorted(kernels))
        kmax = self.kernels[-1]
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels, kmax, stride, kmax // 2, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.transforms = nn.ParameterDict({str(k): nn.Parameter(torch.eye(k * k)) for k in self.kernels[:-1]})

    def kernel_weight(self, kernel: int, channels: int) -> torch.Tensor:
        """The (channels, 1, kernel, kernel) weight of the active kernel size."""
        w = self.conv.weight[:channels]
        big = self.kernels[-1]
        for small in reversed(self.kernels[:-1]):
            if small < kernel:
                break
            lo = (big - small) // 2
            w = w[:, :, lo : lo + small, lo : lo + small].reshape(channels, small * small)
            w = F.linear(w, self.transforms[str(small)]).reshape(channels, 1, small, small)
            big = small
        if big != kernel:
            raise ValueError(f"kernel: expected one of {self.kernels}, got {kernel}")
        return w

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        c = x.shape[1]
        y = depthwise_conv2d(x, self.kernel_weight(kernel, c), self.stride, kernel // 2)
        return _bn(y, self.bn, c)


class ElasticSE(nn.Module):
    """Squeeze-excite over the first channels of its input, with the first `squeeze` hidden units."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.expand = nn.Conv2d(squeeze, channels, 1, bias=True)

    def forward(self, x: torch.Tensor, squeeze: int) -> torch.Tensor:
        c = x.shape[1]
        s = x.mean((2, 3), keepdim=True)
        s = F.conv2d(s, self.reduce.weight[:squeeze, :c], self.reduce.bias[:squeeze])
        s = F.conv2d(torch.relu(s), self.expand.weight[:c, :squeeze], self.expand.bias[:c])
        return x * F.hardsigmoid(s)


class DepthwiseProject(nn.Module):
    """The depthwise -> [SE] -> project part of an MBConv block, over `channels` (expanded) channels at most."""

    def __init__(self, channels: int, squeeze: int, stage: ss.StageSpace, stride: int):
        super().__init__()
        self.dw = ElasticDepthwise(channels, stage.kernels, stride)
        self.se = ElasticSE(channels, squeeze) if squeeze else None
        self.project = ElasticPointwise(channels, max(stage.widths))

    def permute(self, order: torch.Tensor) -> None:
        """Reorder the channels it reads (function-preserving when all of them are used)."""
        self.dw.conv.weight.data.copy_(self.dw.conv.weight.data[order])
        _permute_bn(self.dw.bn, order)
        if self.se is not None:
            self.se.reduce.weight.data.copy_(self.se.reduce.weight.data[:, order])
            self.se.expand.weight.data.copy_(self.se.expand.weight.data[order])
            self.se.expand.bias.data.copy_(self.se.expand.bias.data[order])
        self.project.conv.weight.data.copy_(self.project.conv.weight.data[:, order])


class ElasticMBConv(nn.Module):
    """An MBConv block at its largest size whose forward runs any `Block` of its stage on any input width.

    Expansion ratios > 1 share one expand conv and one depthwise/SE/project path (first channels of the
    expanded tensor). Expansion 1 has no expand conv, so its depthwise conv reads the block input itself; it
    gets its own depthwise/SE/project path (`plain`) instead of reusing the most important expanded channels
    as input channels, which would make the two kinds of block fight over the same weights.
    """

    def __init__(self, max_in: int, stage: ss.StageSpace, first: bool, se_base: ss.Arch):
        super().__init__()
        self.stride = stage.stride if first else 1
        self.se_base = se_base
        expanded = [ss.make_divisible(max_in * e, 8) for e in stage.expands if e != 1]
        ratios = [s for s in stage.se if s > 0]

        def squeeze(channels: int) -> int:
            return max((se_channels(se_base, max_in, channels, s) for s in ratios), default=0)

        self.max_mid = max(expanded) if expanded else max_in
        self.expand = ElasticPointwise(max_in, self.max_mid) if expanded else None
        self.main = DepthwiseProject(self.max_mid, squeeze(self.max_mid), stage, self.stride)
        plain = expanded and 1 in stage.expands
        self.plain = DepthwiseProject(max_in, squeeze(max_in), stage, self.stride) if plain else None
        self.act = make_act(stage.act)

    def path(self, block: ss.Block) -> DepthwiseProject:
        """The depthwise/SE/project weights `block` uses."""
        return self.plain if block.expand == 1 and self.plain is not None else self.main

    def forward(self, x: torch.Tensor, block: ss.Block) -> torch.Tensor:
        cin = x.shape[1]
        mid = block.mid(cin)
        ops = self.path(block)
        y = self.act(self.expand(x, mid)) if block.expand != 1 else x
        y = self.act(ops.dw(y, block.kernel))
        if block.se:
            y = ops.se(y, se_channels(self.se_base, cin, mid, block.se))
        y = ops.project(y, block.out_channels)
        return x + y if self.stride == 1 and cin == block.out_channels else y

    def permute_mid(self, order: torch.Tensor) -> None:
        """Reorder the expanded channels (a function-preserving permutation for the largest sub-network)."""
        if self.expand is not None:
            self.expand.conv.weight.data.copy_(self.expand.conv.weight.data[order])
            _permute_bn(self.expand.bn, order)
        self.main.permute(order)

    def permute_input(self, order: torch.Tensor) -> None:
        """Reorder the input channels (done when the previous block's output channels are reordered)."""
        if self.expand is not None:
            self.expand.conv.weight.data.copy_(self.expand.conv.weight.data[:, order])
        plain = self.main if self.expand is None else self.plain
        if plain is not None:  # depthwise convs reading the block input directly
            plain.permute(order)

    @torch.no_grad()
    def init_plain(self) -> None:
        """Start the no-expansion path from the first channels of the (trained, sorted) expanded path."""
        if self.plain is None:
            return
        src, dst, c = self.main, self.plain, self.plain.dw.conv.out_channels
        dst.dw.conv.weight.copy_(src.dw.conv.weight[:c])
        _copy_bn(dst.dw.bn, src.dw.bn, slice(c))
        for k, t in dst.dw.transforms.items():
            t.copy_(src.dw.transforms[k])
        if dst.se is not None:
            sq = dst.se.reduce.out_channels
            dst.se.reduce.weight.copy_(src.se.reduce.weight[:sq, :c])
            dst.se.reduce.bias.copy_(src.se.reduce.bias[:sq])
            dst.se.expand.weight.copy_(src.se.expand.weight[:c, :sq])
            dst.se.expand.bias.copy_(src.se.expand.bias[:c])
        dst.project.conv.weight.copy_(src.project.conv.weight[:, :c])
        _copy_bn(dst.project.bn, src.project.bn, slice(None))

    def outputs(self) -> list[ElasticPointwise]:
        """The projections writing this block's output channels."""
        return [self.main.project] + ([self.plain.project] if self.plain is not None else [])


def outside_reasons(space: ss.SearchSpace, arch: ss.Arch) -> list[str]:
    """What about `arch` lies outside `space` (empty when `space.contains(arch)`)."""
    ref = space.smallest()
    out = [f"arch.{f} = {getattr(arch, f)!r} (space has {getattr(ref, f)!r})"
           for f in ("in_channels", "num_classes", "stem_channels", "stem_stride", "stem_act", "head_channels",
                     "head_act", "head_hidden", "se_base") if getattr(arch, f) != getattr(ref, f)]
    if arch.resolution not in space.resolutions:
        out.append(f"arch.resolution = {arch.resolution} (space has {space.resolutions})")
    if len(arch.stages) != len(space.stages):
        return out + [f"arch has {len(arch.stages)} stages (space has {len(space.stages)})"]
    for i, (st, blocks) in enumerate(zip(space.stages, arch.stages, strict=True)):
        if len(blocks) not in st.depths:
            out.append(f"stages[{i}] depth = {len(blocks)} (space has {st.depths})")
        for j, b in enumerate(blocks):
            where = f"stages[{i}][{j}]"
            checks = (("kernel", b.kernel, st.kernels), ("expand", b.expand, st.expands), ("se", b.se, st.se),
                      ("out_channels", b.out_channels, st.widths), ("act", b.act, (st.act,)),
                      ("stride", b.stride, (st.stride if j == 0 else 1,)), ("mid_channels", b.mid_channels, (0,)))
            out += [f"{where}.{name} = {v!r} (space has {allowed})" for name, v, allowed in checks if v not in allowed]
            if b.out_channels != blocks[0].out_channels:
                out.append(f"{where}.out_channels = {b.out_channels} differs from its stage's first block "
                           f"({blocks[0].out_channels})")
    return out


class Supernet(nn.Module):
    """Once-for-all supernet over a `SearchSpace`; `set_active` / `extract` select sub-networks."""

    def __init__(self, space: ss.SearchSpace):
        super().__init__()
        self.space = space
        largest = space.largest()
        self.stem = ConvBNAct(space.in_channels, space.stem_channels, 3, space.stem_stride, act=space.stem_act)
        stages = []
        c = space.stem_channels
        for st in space.stages:
            width = max(st.widths)
            stages.append(nn.ModuleList(ElasticMBConv(c if i == 0 else width, st, i == 0, largest)
                                        for i in range(max(st.depths))))
            c = width
        self.stages = nn.ModuleList(stages)
        self.head = ElasticPointwise(c, space.head_channels)
        self.head_act = make_act(space.head_act)
        c = space.head_channels
        self.hidden = nn.Linear(c, space.head_hidden) if space.head_hidden else None
        self.hidden_act = make_act(space.head_act) if space.head_hidden else nn.Identity()
        self.classifier = nn.Linear(space.head_hidden or c, space.num_classes)
        self.arch = largest
        _init(self)

    def check(self, arch: ss.Arch) -> None:
        """Raise `ValueError` naming what in `arch` is outside the supernet's space."""
        reasons = outside_reasons(self.space, arch)
        if reasons:
            more = f" (and {len(reasons) - 6} more)" if len(reasons) > 6 else ""
            raise ValueError(f"arch is not in the supernet's space {self.space.name!r}: "
                             + "; ".join(reasons[:6]) + more)

    def set_active(self, arch: ss.Arch) -> None:
        """Make `forward` run the sub-network `arch`."""
        self.check(arch)
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.arch
        r = arch.resolution
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=x.shape[-1] > r)
        x = self.stem(x)
        for modules, blocks in zip(self.stages, arch.stages, strict=True):
            for module, block in zip(modules, blocks, strict=False):
                x = module(x, block)
        x = self.head_act(self.head(x, arch.head_channels)).mean((2, 3))
        if self.hidden is not None:
            x = self.hidden_act(self.hidden(x))
        return self.classifier(x)

    @torch.no_grad()
    def extract(self, arch: ss.Arch) -> MBConvNet:
        """A standalone `search_spaces.build(arch)` model holding the sub-network's weights (same train/eval mode)."""
        self.check(arch)
        model = ss.build(arch)
        model.stem.load_state_dict(self.stem.state_dict())
        targets = iter(model.blocks)
        c = arch.stem_channels
        for modules, blocks in zip(self.stages, arch.stages, strict=True):
            for src, b in zip(modules, blocks, strict=False):
                dst = next(targets)
                mid = b.mid(c)
                if dst.expand is not None:
                    dst.expand.conv.weight.copy_(src.expand.conv.weight[:mid, :c])
                    _copy_bn(dst.expand.bn, src.expand.bn, slice(mid))
                ops = src.path(b)
                dst.dw.conv.weight.copy_(ops.dw.kernel_weight(b.kernel, mid))
                _copy_bn(dst.dw.bn, ops.dw.bn, slice(mid))
                if dst.se is not None:
                    sq = dst.se.reduce.out_channels
                    dst.se.reduce.weight.copy_(ops.se.reduce.weight[:sq, :mid])
                    dst.se.reduce.bias.copy_(ops.se.reduce.bias[:sq])
                    dst.se.expand.weight.copy_(ops.se.expand.weight[:mid, :sq])
                    dst.se.expand.bias.copy_(ops.se.expand.bias[:mid])
                dst.project.conv.weight.copy_(ops.project.conv.weight[: b.out_channels, :mid])
                _copy_bn(dst.project.bn, ops.project.bn, slice(b.out_channels))
                c = b.out_channels
        model.head.conv.weight.copy_(self.head.conv.weight[:, :c])
        _copy_bn(model.head.bn, self.head.bn, slice(None))
        if self.hidden is not None:
            model.hidden.load_state_dict(self.hidden.state_dict())
        model.classifier.load_state_dict(self.classifier.state_dict())
        return model.train(self.training)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder channels by importance (L1 norm) so that narrower sub-networks keep the most important ones.

        Expanded channels are ranked by the L1 norm of the projection weights reading them; a stage's output
        channels (shared by its residual stream) by the summed L1 norm of the expanded paths' projections writing
        them (the no-expansion paths train only from this phase on). Both are
        permutations, so the largest sub-network computes exactly the same function afterwards.
        """
        for modules in self.stages:
            for m in modules:
                if m.expand is not None:
                    imp = m.main.project.conv.weight.abs().sum((0, 2, 3))
                    m.permute_mid(torch.argsort(imp, descending=True))
        for i, (st, modules) in enumerate(zip(self.space.stages, self.stages, strict=True)):
            if len(st.widths) == 1:
                continue
            importance = sum(m.main.project.conv.weight.abs().sum((1, 2, 3)) for m in modules)
            order = torch.argsort(importance, descending=True)
            for p in (p for m in modules for p in m.outputs()):
                p.conv.weight.data.copy_(p.conv.weight.data[order])
                _permute_bn(p.bn, order)
            for m in list(modules)[1:]:
                m.permute_input(order)
            if i + 1 < len(self.stages):
                self.stages[i + 1][0].permute_input(order)
            else:
                self.head.conv.weight.data.copy_(self.head.conv.weight.data[:, order])

    def init_plain_paths(self) -> None:
        """Warm-start every no-expansion path from its block's expanded path (call after `sort_channels`)."""
        for modules in self.stages:
            for m in modules:
                m.init_plain()


def _init(net: nn.Module) -> None:
    """The initialisation of `search_spaces.build` (kernel transforms stay the identity)."""
    ss.init_weights(net)
