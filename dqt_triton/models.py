"""Float reference architectures written with plain torch modules (what `DQTModel.from_float`
converts): an MLP, a plain CNN, a 1-D CNN, ResNet-18 with the CIFAR stem and ResNet-50 with the ImageNet
stem. `width` scales the channel counts so tests and digits-sized runs stay small."""

from __future__ import annotations

import torch
from torch import nn


def mlp(in_features: int = 64, hidden: int = 64, num_classes: int = 10, depth: int = 2) -> nn.Sequential:
    """Flatten, then `depth` Linear-ReLU hidden layers of `hidden` units, then the classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden if depth else in_features, num_classes))
    return nn.Sequential(*layers)


def simple_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 16, image_size: int = 8) -> nn.Sequential:
    """conv-bn-relu, max pool, conv-bn-relu, average pool, linear (image_size divisible by 4)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, num_classes),
    )


def cnn1d(in_channels: int = 1, num_classes: int = 10, width: int = 32, length: int = 40) -> nn.Sequential:
    """A 1-D CNN for signals [C, 1, length] written with (1, 5) Conv2d kernels: three
    conv-bn-relu layers of `width` channels (strides 1, 2, 2), then a linear classifier on the
    flattened features. Float, 30 epochs: 96.9% on MNIST-1D at width 32 (the package's
    reference CNN, strides 2, 2, 2: 94%)."""
    out = length
    layers: list[nn.Module] = []
    for i, stride in enumerate((1, 2, 2)):
        layers += [nn.Conv2d(in_channels if i == 0 else width, width, (1, 5), stride=(1, stride), padding=(0, 2),
                             bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        out = (out - 1) // stride + 1
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * out, num_classes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-style ResNet; `stem="cifar"` is a 3x3 stride-1 conv without max pool,
    `stem="imagenet"` the 7x7 stride-2 conv and 3x3 stride-2 max pool."""

    def __init__(self, block, layers, num_classes: int = 10, in_channels: int = 3, width: int = 64,
                 stem: str = "cifar") -> None:
        super().__init__()
        self.in_planes = width
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(block, width, layers[0], 1)
        self.layer2 = self._stage(block, 2 * width, layers[1], 2)
        self.layer3 = self._stage(block, 4 * width, layers[2], 2)
        self.layer4 = self._stage(block, 8 * width, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

    def _stage(self, block, planes, blocks, stride):
        stage = []
        for s in [stride] + [1] * (blocks - 1):
            stage.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*stage)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width, stem="cifar")


def resnet50(num_classes: int = 1000, in_channels: int = 3, width: int = 64) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width, stem="imagenet")
