"""Catalog entries of pretrained model weights: files the models read from the data directory, never downloaded.

``resnet50-imagenet`` and ``resnet101-imagenet``: torchvision's ImageNet ResNet state dicts for the ``deeplabv3``
encoder's ``weights`` option (``mtlscope.models.deeplab``), listed by ``mtlscope data`` with where to get them.
"""

from __future__ import annotations

from mtlscope.data.catalog import DataFile, DatasetInfo, register_dataset

#: torchvision's file name of each backbone's IMAGENET1K_V1 weights.
FILES: dict[str, str] = {"resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}

for _backbone, _file in FILES.items():
    register_dataset(
        DatasetInfo(
            name=f"{_backbone}-imagenet",
            description=f"ImageNet weights of a {_backbone.upper()} for the deeplabv3 encoder (torchvision state dict)",
            source=(
                f"torchvision's {_backbone} IMAGENET1K_V1 weights, https://download.pytorch.org/models/{_file}, saved "
                f"as weights/{_backbone}-imagenet.pth (or any torchvision-named state dict, .pth or .safetensors); "
                "`mtlscope data download` does not fetch model weights"
            ),
            reference="He et al. Deep Residual Learning for Image Recognition. CVPR 2016",
            files=(DataFile("weights", (f"weights/{_backbone}-imagenet.pth", f"weights/{_file}")),),
        )
    )
