"""ResNet-34 from timm (`timm.models.resnet.ResNet`, BasicBlock [3,4,6,3]) with the ANN source's activation
injected and no max-pooling.

stem="imagenet": timm's 7x7/2 conv + BN + act, then AvgPool2d(3, 2, 1) in place of the max-pool.
stem="cifar": a single 3x3/1 conv + BN + act and no pool, as the published QCFS/COS ImageNet checkpoints use.
stem="deep": timm's deep stem (3x3/2 conv 32 - BN - act - 3x3 conv 32 - BN - act - 3x3 conv 64, `stem_width=32`),
BN + act, AvgPool2d(3, 2, 1): SNN_Calibration's `resnet34_snn` (FTBC's "Ours*" ImageNet network), same keys.
State-dict keys are timm's (= torchvision's: conv1, bn1, layer1..4, fc), so such checkpoints load directly.
timm applies the activation after the residual add and builds one activation instance per slot (33 in all).
"""

from __future__ import annotations

import torch.nn as nn
from timm.models.resnet import BasicBlock, ResNet

from snnconv.models.registry import register_model


@register_model
def resnet34(act_layer, num_classes=1000, in_chans=3, width=1.0, stem="imagenet", **_):
    if width != 1.0:
        raise ValueError("resnet34 (timm) supports width=1.0 only")
    if stem not in ("imagenet", "cifar", "deep"):
        raise ValueError(f"unknown resnet34 stem {stem!r} (imagenet | cifar | deep)")
    deep = {"stem_type": "deep", "stem_width": 32} if stem == "deep" else {}
    model = ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_chans=in_chans, act_layer=act_layer, **deep)
    if stem in ("imagenet", "deep"):
        model.maxpool = nn.AvgPool2d(3, 2, 1)
    elif stem == "cifar":
        model.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model
