"""ResNet-20 for CIFAR (He et al. 2016), as QCFS/COS use it.

Stem Conv3x3(16) -> BN -> act; 3 stages x 3 BasicBlocks at 16/32/64 channels (x width), strides 1/2/2;
BasicBlock = conv-BN-act-conv-BN (+ shortcut: identity, or 1x1 conv + BN when the shape changes), with the
activation applied AFTER the residual addition; global average pool -> Linear. 19 activations.
Input [B, in_chans, H, W]; output logits [B, num_classes].
"""

from __future__ import annotations

import torch.nn as nn

from snnconv.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, act_layer):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act2 = act_layer()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depths, widths, act_layer, num_classes=10, in_chans=3, width=1.0):
        super().__init__()
        widths = [max(1, round(w * width)) for w in widths]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = act_layer()
        stages, c_in = [], widths[0]
        for i, (depth, c_out) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(c_in, c_out, 2 if (j == 0 and i > 0) else 1, act_layer))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def resnet20(act_layer, num_classes=10, in_chans=3, width=1.0, **_):
    return ResNetCifar([3, 3, 3], [16, 32, 64], act_layer, num_classes, in_chans, width)
