"""Architectures (one file per family) behind a timm-style registry."""

from snnconv.models import external, resnet_cifar, resnet_imagenet, vgg  # noqa: F401  (register the entry points)
from snnconv.models.external import replace_maxpool
from snnconv.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "replace_maxpool"]
