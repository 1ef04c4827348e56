"""The paper's CIFAR ResNets (He et al. 2016, section 4.2) in PyTorch, with torchvision's
parameter names, as the reference for crates/resnet-core's `resnet20/32/44/56/110` and
`plain20/...`: 3x3 stem to 16 channels, three stages of n basic blocks (16, 32, 64 channels),
global average pooling, fc. Option A shortcuts: where a stage halves the size, take every
second pixel from 0 and zero-pad the new channels half before, half after. Option B: 1x1
conv + BN (`downsample.0/1`). Plain: no shortcut.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_kind = shortcut
        self.stride = stride
        self.pad = planes - in_planes
        if shortcut == "B" and (stride != 1 or in_planes != planes):
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        else:
            self.downsample = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut_kind == "none":
            return F.relu(out)
        if self.downsample is not None:
            sc = self.downsample(x)
        elif self.stride != 1 or self.pad:
            before = self.pad // 2
            sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, before, self.pad - before))
        else:
            sc = x
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, depth, shortcut="A", num_classes=10, in_channels=3):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for s, planes in enumerate([16, 32, 64]):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def get_model(name, num_classes=10, in_channels=3):
    """`resnet20` (option A), `resnet20-b` (option B), `plain20`."""
    if name.startswith("plain"):
        return CifarResNet(int(name[5:]), "none", num_classes, in_channels)
    if name.endswith("-b"):
        return CifarResNet(int(name[6:-2]), "B", num_classes, in_channels)
    return CifarResNet(int(name[6:]), "A", num_classes, in_channels)
