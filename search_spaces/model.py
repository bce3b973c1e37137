"""`build(arch)`: an `Arch` value -> a plain PyTorch module (decode -> config -> build, as in timm)."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.arch import Arch, Block
from search_spaces.cost import se_channels


def make_act(name: str) -> nn.Module:
    """The activation module for an activation name of the search space."""
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "swish": nn.SiLU, "none": nn.Identity}
    if name not in acts:
        raise ValueError(f"act: expected one of {sorted(acts)}, got {name!r}")
    return acts[name]()


class ConvBNAct(nn.Module):
    """Convolution (no bias) -> batch norm -> activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str = "relu6"):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hard-sigmoid -> channel scale (MobileNetV3 form)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.expand = nn.Conv2d(squeeze, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(torch.relu(self.reduce(s)))
        return x * nn.functional.hardsigmoid(s)


class MBConv(nn.Module):
    """Inverted-residual block: [expand] -> depthwise -> [SE] -> project, plus residual when shapes allow."""

    def __init__(self, cin: int, block: Block, se_width: int):
        super().__init__()
        mid = block.mid(cin)
        self.expand = ConvBNAct(cin, mid, 1, act=block.act) if block.expand != 1 else None
        self.dw = ConvBNAct(mid, mid, block.kernel, block.stride, groups=mid, act=block.act)
        self.se = SqueezeExcite(mid, se_width) if block.se else None
        self.project = ConvBNAct(mid, block.out_channels, 1, act="none")
        self.use_residual = block.stride == 1 and cin == block.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.use_residual else y


class MBConvNet(nn.Module):
    """Stem -> MBConv blocks -> 1x1 head -> pool -> [hidden linear] -> classifier. Input NCHW float."""

    def __init__(self, arch: Arch, dropout: float = 0.0):
        super().__init__()
        self.arch = arch
        self.stem = ConvBNAct(arch.in_channels, arch.stem_channels, 3, arch.stem_stride, act=arch.stem_act)
        blocks = []
        c = arch.stem_channels
        for b in arch.blocks():
            blocks.append(MBConv(c, b, se_channels(arch, c, b.mid(c), b.se) if b.se else 0))
            c = b.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBNAct(c, arch.head_channels, 1, act=arch.head_act)
        c = arch.head_channels
        self.hidden = nn.Linear(c, arch.head_hidden) if arch.head_hidden else None
        self.hidden_act = make_act(arch.head_act) if arch.head_hidden else nn.Identity()
        c = arch.head_hidden or c
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, arch.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.hidden is not None:
            x = self.hidden_act(self.hidden(x))
        return self.classifier(self.dropout(x))


def init_weights(module: nn.Module) -> None:
    """The MobileNet reference initialisation: Kaiming (fan-out) convs, unit BN, small normal linear layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build(arch: Arch, dropout: float = 0.0) -> MBConvNet:
    """A freshly initialised PyTorch model of `arch` (`init_weights`)."""
    model = MBConvNet(arch, dropout)
    init_weights(model)
    return model
