"""ResNet and MobileNet-v2 as torchvision defines them, for tests, benchmarks and examples;
and ``PATTERNS``: one block or head each of ConvNeXt, RegNetY, EfficientNet, DeepLabV3,
Inception-v3 and AlexNet (their kinds of convolution), with their input shapes.

torchvision from PyPI does not import beside the CPU build of torch 2.13 used here, so the
networks are defined again, module for module as torchvision's (same layer names, so a
torchvision ``state_dict`` loads into them). Weights are random; ``randomize_batchnorm``
gives the BatchNorm layers non-trivial statistics, so that folding them is really tested.

    convgen tune --torch-model convgen.torch.models:resnet50 --input-shape 1,3,224,224
    convgen tune --torch-model convgen.torch.models:regnet_block --input-shape 1,104,28,28
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class _Block(nn.Module):
    """A residual block: ``relu(branch(x) + shortcut(x))``, the shortcut a projection
    (``downsample``) where the shape changes, else ``x`` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.branch(x)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class BasicBlock(_Block):
    """ResNet-18/34 block: two 3x3 convolutions and the skip connection."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.downsample = downsample

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_Block):
    """ResNet-50 block: 1x1 reduce, 3x3 (stride here, as torchvision v1.5), 1x1 expand, skip."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, width * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """torchvision's ResNet: stem, four stages of blocks, global pooling, classifier."""

    def __init__(self, block: type, layers: list[int], num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, width, layers[0])
        self.layer2 = self._stage(block, width * 2, layers[1], 2)
        self.layer3 = self._stage(block, width * 4, layers[2], 2)
        self.layer4 = self._stage(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _stage(self, block: type, width: int, n: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != width * block.expansion:
            downsample = nn.Sequential(*_conv_bn(self.inplanes, width * block.expansion, 1, stride))
        blocks = [block(self.inplanes, width, stride, downsample)]
        self.inplanes = width * block.expansion
        blocks += [block(self.inplanes, width) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNet-v2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 project, skip if
    the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNet-v2 (width 1.0); ``settings`` (expansion, channels, blocks,
    stride per stage), ``stem`` and ``last`` make smaller variants for tests."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, settings: list[tuple[int, int, int, int]] | None = None,
                 stem: int = 32, last: int = 1280) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(3, stem, 3, 2), nn.ReLU6(inplace=True))]
        cin = stem
        for t, c, n, s in settings or self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(nn.Sequential(*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (a model
    fresh from its constructor has mean 0, variance 1: folding it would change nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18, random weights, eval mode, BatchNorm statistics randomized."""
    return randomize_batchnorm(ResNet(BasicBlock, [2, 2, 2, 2], num_classes)).eval()


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (torchvision v1.5), random weights, eval mode, BatchNorm randomized."""
    return randomize_batchnorm(ResNet(Bottleneck, [3, 4, 6, 3], num_classes)).eval()


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNet-v2, random weights, eval mode, BatchNorm randomized."""
    return randomize_batchnorm(MobileNetV2(num_classes)).eval()


# -- patterns of other networks ----------------------------------------------------------
# One block (or head) each of networks whose convolutions differ from ResNet's and
# MobileNet-v2's: large depthwise kernels, grouped 3x3, squeeze-excitation, dilation,
# factorized 1x7 / 7x1, large strided kernels. Each is defined module for module as
# torchvision's (same submodule names), random weights, eval mode, BatchNorm randomized;
# PATTERNS lists them with the input shape they take in the real network.


class _ConvNormActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: conv (no bias) as ``0``, BatchNorm as ``1``,
    the activation (if any) as ``2``."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int] = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1, activation: type | None = nn.ReLU, eps: float = 1e-5) -> None:
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = tuple((d - 1) // 2 * dilation for d in k)
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=eps)]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops' squeeze-excitation: global average pool, 1x1 reduce, activation,
    1x1 expand, sigmoid, and the input scaled per channel by the result."""

    def __init__(self, channels: int, squeeze: int, activation: type = nn.ReLU) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = activation()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class Permute(nn.Module):
    """torchvision's ``Permute``: ``x.permute(dims)`` as a module."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block: 7x7 depthwise conv (bias), channels-last LayerNorm,
    Linear to 4x the channels, GELU, Linear back, per-channel layer scale, residual add
    (stochastic depth is the identity in eval mode and is left out)."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(x)
        result += x
        return result


class RegNetBlock(nn.Module):
    """torchvision's RegNet ``ResBottleneckBlock`` (RegNetY: with squeeze-excitation):
    ``f`` = 1x1 conv-BN-ReLU (``a``), grouped 3x3 conv-BN-ReLU (``b``), SE, 1x1 conv-BN
    (``c``); ``relu(x + f(x))``, the shortcut a 1x1 projection (``proj``) where the shape
    changes."""

    def __init__(self, width_in: int, width_out: int, stride: int = 1, group_width: int = 8,
                 se_ratio: float = 0.25) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = _ConvNormActivation(width_in, width_out, 1, stride, activation=None)
        self.f = nn.Sequential()
        self.f.add_module("a", _ConvNormActivation(width_in, width_out, 1))
        self.f.add_module("b", _ConvNormActivation(width_out, width_out, 3, stride, groups=width_out // group_width))
        self.f.add_module("se", SqueezeExcitation(width_out, int(round(se_ratio * width_in))))
        self.f.add_module("c", _ConvNormActivation(width_out, width_out, 1, activation=None))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.f(x) if self.proj is not None else x + self.f(x)
        return self.activation(x)


class MBConv(nn.Module):
    """torchvision's EfficientNet ``MBConv``: 1x1 expand (BN, SiLU), k x k depthwise (BN,
    SiLU), squeeze-excitation (SiLU inside), 1x1 project (BN), residual add where the
    shape allows; BatchNorm eps 1e-3 as EfficientNet's."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_ConvNormActivation(cin, hidden, 1, activation=nn.SiLU, eps=1e-3))
        layers += [_ConvNormActivation(hidden, hidden, kernel, stride, groups=hidden, activation=nn.SiLU, eps=1e-3),
                   SqueezeExcitation(hidden, max(1, cin // 4), activation=nn.SiLU),
                   _ConvNormActivation(hidden, cout, 1, activation=None, eps=1e-3)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class ASPPConv(nn.Sequential):
    """DeepLabV3's atrous branch: 3x3 conv with dilation (padding = dilation), BN, ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """DeepLabV3's image-pooling branch: global average pool, 1x1 conv, BN, ReLU, and
    bilinear upsampling back to the input's size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLabV3's atrous spatial pyramid pooling: a 1x1 branch, one dilated 3x3 branch per
    rate, the pooling branch, concatenated and projected by a 1x1 conv (BN, ReLU; dropout,
    the identity in eval mode)."""

    def __init__(self, cin: int, rates: tuple[int, ...], cout: int = 256) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        branches += [ASPPConv(cin, cout, rate) for rate in rates]
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(self.convs) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Module):
    """The last backbone layer of a DeepLabV3 MobileNet (a dilated 3x3 depthwise conv, BN,
    ReLU: the backbone's last stage runs with dilation 2 for output stride 16), then
    torchvision's ``DeepLabHead``: ASPP, 3x3 conv-BN-ReLU, 1x1 classifier (with bias), as
    ``classifier`` (its name in torchvision's DeepLabV3)."""

    def __init__(self, cin: int, num_classes: int, rates: tuple[int, ...], width: int = 256) -> None:
        super().__init__()
        self.backbone_tail = _ConvNormActivation(cin, cin, 3, groups=cin, dilation=2)
        self.classifier = nn.Sequential(ASPP(cin, rates, width), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone_tail(x))


class BasicConv2d(nn.Module):
    """Inception-v3's conv unit: conv (no bias), BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, **kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu(self.bn(self.conv(x)), inplace=True)


class InceptionC(nn.Module):
    """torchvision's Inception-v3 ``InceptionC`` (Mixed_6b..6e): a 1x1 branch, a 1x7 -> 7x1
    branch, a 7x1 -> 1x7 -> 7x1 -> 1x7 branch and a 3x3-average-pool -> 1x1 branch,
    concatenated (4 x 192 channels)."""

    def __init__(self, cin: int, c7: int, cout: int = 192) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, cout, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, cout, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, cout, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = self.branch7x7dbl_1(x)
        dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(dbl))))
        pool = self.branch_pool(nn.functional.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch7x7, dbl, pool], 1)


class AlexNetFeatures(nn.Module):
    """The first two convolutions of torchvision's AlexNet ``features`` (same indices, so
    its ``features.0`` / ``features.3`` weights load): 11x11 stride-4 conv, ReLU, 3x3/2 max
    pool, 5x5 conv, ReLU."""

    def __init__(self, c1: int = 64, c2: int = 192) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(kernel_size=3, stride=2),
                                      nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _randomize_layer_scale(model: nn.Module, seed: int) -> nn.Module:
    """Layer scales in [0.25, 0.75], as a trained network's, not as initialised (ConvNeXt's
    starts at 1e-6: the block would be the identity to 1e-6, and a check of its output
    would check nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.25)
    return model


def convnext_block(dim: int = 96) -> CNBlock:
    """ConvNeXt-T's stage-1 block (torchvision ``CNBlock``): 7x7 depthwise conv on 96
    channels, LayerNorm, Linear 96 -> 384, GELU, Linear 384 -> 96, layer scale, residual.
    Input ``(N, 96, 56, 56)`` (``(N, dim, 56, 56)``). The layer scale is randomized in
    [0.25, 0.75] (torchvision initialises it to 1e-6)."""
    return _randomize_layer_scale(CNBlock(dim), seed=10).eval()


def regnet_block(width: int = 104, group_width: int = 8) -> RegNetBlock:
    """RegNetY-400MF's stage-2 block (torchvision ``ResBottleneckBlock``, widths 48, 104,
    208, 440, group width 8, SE ratio 0.25): 1x1, grouped 3x3 (13 groups of 8), SE
    (104 -> 26 -> 104), 1x1, residual, ReLU. Input ``(N, 104, 28, 28)``
    (``(N, width, 28, 28)``)."""
    return randomize_batchnorm(RegNetBlock(width, width, 1, group_width), seed=11).eval()


def efficientnet_block(channels: int = 40, expand: int = 6, kernel: int = 5) -> MBConv:
    """EfficientNet-B0's stage-3 repeat block (torchvision ``MBConv``): 1x1 expand
    40 -> 240, 5x5 depthwise stride 1, SE (240 -> 10 -> 240), SiLU, 1x1 project 240 -> 40,
    residual. Input ``(N, 40, 28, 28)`` (``(N, channels, 28, 28)``)."""
    return randomize_batchnorm(MBConv(channels, channels, kernel, 1, expand), seed=12).eval()


def deeplab_head(in_channels: int = 512, width: int = 256, num_classes: int = 21,
                 rates: tuple[int, ...] = (12, 24, 36)) -> DeepLabHead:
    """DeepLabV3's head (torchvision ``DeepLabHead``: ASPP with a 1x1 branch, 3x3 branches
    of dilation 12, 24, 36 and a pooling branch, 1x1 projection of the concatenation, 3x3
    conv, 1x1 classifier to 21 classes) on a 512-channel, 28x28 feature map (a ResNet-18/34
    backbone at output stride 8), after a dilated 3x3 depthwise conv (dilation 2) as the
    MobileNet backbones of DeepLabV3 run their last stage. At 28x28 the dilation-36 branch
    reaches past the image: most taps read padding, as on small inputs in the real network.
    Input ``(N, 512, 28, 28)`` (``(N, in_channels, 28, 28)``)."""
    return randomize_batchnorm(DeepLabHead(in_channels, num_classes, rates, width), seed=13).eval()


def inception_block(in_channels: int = 768, c7: int = 128) -> InceptionC:
    """Inception-v3's Mixed_6b (torchvision ``InceptionC(768, channels_7x7=128)``):
    factorized 1x7 (padding (0, 3)) and 7x1 (padding (3, 0)) convolutions on 17x17.
    Input ``(N, 768, 17, 17)`` (``(N, in_channels, 17, 17)``)."""
    return randomize_batchnorm(InceptionC(in_channels, c7), seed=14).eval()


def alexnet_features(c1: int = 64, c2: int = 192) -> AlexNetFeatures:
    """AlexNet's first two convolutions (torchvision ``features[0:5]``): 3 -> 64, 11x11,
    stride 4, padding 2; ReLU; 3x3 stride-2 max pool; 64 -> 192, 5x5, padding 2; ReLU.
    Input ``(N, 3, 224, 224)``."""
    return AlexNetFeatures(c1, c2).eval()


# name -> (factory, input shape at batch 1); the factories' defaults are the real network's sizes
PATTERNS: dict[str, tuple] = {
    "convnext_block": (convnext_block, (1, 96, 56, 56)),
    "regnet_block": (regnet_block, (1, 104, 28, 28)),
    "efficientnet_block": (efficientnet_block, (1, 40, 28, 28)),
    "deeplab_head": (deeplab_head, (1, 512, 28, 28)),
    "inception_block": (inception_block, (1, 768, 17, 17)),
    "alexnet_features": (alexnet_features, (1, 3, 224, 224)),
}
