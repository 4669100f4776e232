"""``digits-mtl``: the embedded analogue of FashionMTL (Mueller et al., TMLR 2025, §2.2).

FashionMTL splits FashionMNIST into Fashion1 and Fashion2 and adds NoisyFashion (Fashion2 with its labels
randomly permuted); Fashion1 should gain from Fashion2 (more in-distribution data) and lose from
NoisyFashion (noise the shared encoder must memorize). Here the same construction is applied to
scikit-learn's digits:

- a fixed test set (``test_size``) and validation set (``val_size``) are drawn first;
- the remaining pool is split into disjoint ``digits1`` (``digits1_size`` images, the target task) and
  ``digits2`` (the rest);
- ``noisy-digits`` has digits2's images with digits2's labels randomly permuted across images (a fixed
  seed), so its labels carry no information about its images.

digits1 and digits2 are evaluated on the same validation and test images (same distribution);
noisy-digits is evaluated on those images with their labels permuted the same way (chance level, 10%).
Multi-input layout. All draws come from ``split_seed``; the permutation of noisy labels from
``split_seed + 1``.
"""

from __future__ import annotations

import numpy as np

from mtlscope.losses import cross_entropy
from mtlscope.metrics import accuracy, macro_f1
from mtlscope.options import NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_arrays
from mtlscope.settings.digits_source import digit_images, split_indices
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

#: Every task: cross-entropy loss, accuracy (primary) and macro-F1.
CLASSIFICATION_METRICS = (accuracy(), macro_f1())
REFERENCE = "Mueller, Dredze, Andrews. Can Optimization Trajectories Explain Multi-Task Transfer? TMLR 2025"


@register("digits-mtl", "digits1 + digits2 (more data) + noisy-digits (permuted labels); FashionMTL analogue")
def digits_mtl(
    *,
    test_size: PositiveInt = 500,
    val_size: PositiveInt = 300,
    digits1_size: PositiveInt = 150,
    split_seed: NonNegativeInt = 0,
) -> Setting:
    images, labels = digit_images()
    for option, value in (("test_size", test_size), ("val_size", val_size), ("digits1_size", digits1_size)):
        if value < 1:
            raise ValueError(f"digits-mtl option {option} must be >= 1, got {value}")
    pool_size = len(labels) - test_size - val_size
    if digits1_size >= pool_size:
        raise ValueError(
            f"digits-mtl option digits1_size must be < {pool_size} (the pool left after test and val), "
            f"got {digits1_size}"
        )
    test_idx, val_idx, d1_idx, d2_idx = split_indices(
        len(labels), [test_size, val_size, digits1_size, pool_size - digits1_size], split_seed
    )
    val = (images[val_idx], labels[val_idx])
    test = (images[test_idx], labels[test_idx])
    noise = np.random.default_rng(split_seed + 1)
    noisy_train = labels[d2_idx][noise.permutation(len(d2_idx))]
    noisy_val = (val[0], val[1][noise.permutation(len(val_idx))])
    noisy_test = (test[0], test[1][noise.permutation(len(test_idx))])
    train2 = images[d2_idx]
    data = {
        "digits1": {"train": (images[d1_idx], labels[d1_idx]), "val": val, "test": test},
        "digits2": {"train": (train2, labels[d2_idx]), "val": val, "test": test},
        "noisy-digits": {"train": (train2, noisy_train), "val": noisy_val, "test": noisy_test},
    }
    tasks = [
        TaskSpec(name, 10, loss=cross_entropy(), metrics=CLASSIFICATION_METRICS, description=description)
        for name, description in (
            ("digits1", "digit classification on the target split"),
            ("digits2", "digit classification on the disjoint second split (more in-distribution data)"),
            ("noisy-digits", "digits2's images with randomly permuted labels (pure noise to memorize)"),
        )
    ]
    return from_arrays(
        "digits-mtl",
        tasks,
        data,
        layout="multi-input",
        default_model={"encoder": {"name": "lenet"}, "head": {"name": "linear"}},
        description=__doc__.strip().splitlines()[0] if __doc__ else "",
        reference=REFERENCE,
        options={
            "test_size": test_size,
            "val_size": val_size,
            "digits1_size": digits1_size,
            "split_seed": split_seed,
        },
    )
