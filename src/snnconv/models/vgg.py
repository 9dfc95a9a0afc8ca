"""VGG16 as the QCFS/COS papers use it for conversion.

13 x (Conv3x3 pad 1 -> BN -> act), AvgPool2d(2) after each of the 5 blocks (no max-pooling: it has no spiking
equivalent), then Flatten -> Linear(512*s*s, 4096) -> act -> Dropout -> Linear(4096, 4096) -> act -> Dropout ->
Linear(4096, classes). All widths scale with `width`. 15 activations (13 conv + 2 FC).
Input [B, in_chans, img_size, img_size]; output logits [B, num_classes].
"""

from __future__ import annotations

import torch.nn as nn

from snnconv.models.registry import register_model

CFG16 = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class VGG(nn.Module):
    def __init__(self, cfg, act_layer, num_classes=10, in_chans=3, img_size=32, width=1.0, dropout=0.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for block in cfg:
            for c in block:
                c_out = max(1, round(c * width))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), act_layer()]
                c_in = c_out
            layers.append(nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        side = img_size // 2 ** len(cfg)
        hidden = max(1, round(4096 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, hidden),
            act_layer(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            act_layer(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model
def vgg16(act_layer, num_classes=10, in_chans=3, img_size=32, width=1.0, dropout=0.0, **_):
    return VGG(CFG16, act_layer, num_classes, in_chans, img_size, width, dropout)
