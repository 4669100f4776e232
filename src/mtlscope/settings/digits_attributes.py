"""``digits-attributes``: the embedded analogue of CelebA's attribute tasks (shared-input layout).

Every image carries several labels derived from its digit d, each a task with its own head:

| task       | label                          | classes |
|------------|--------------------------------|---------|
| digit      | d                              | 10      |
| even       | d is even                      | 2       |
| large      | d >= 5                         | 2       |
| prime      | d in {2, 3, 5, 7}              | 2       |
| mod3       | d mod 3                        | 3       |
| loop       | d has a closed loop {0,6,8,9}  | 2       |

(4 is written open in this data set, so it is not counted as having a loop.) The 1797 images are split
once by ``split_seed`` into test, validation and training sets. CelebA's use in MTL: Sener & Koltun
(NeurIPS 2018), Fifty et al. (NeurIPS 2021), Mueller et al. (TMLR 2025).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from mtlscope.losses import cross_entropy
from mtlscope.metrics import accuracy, macro_f1
from mtlscope.options import NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_arrays
from mtlscope.settings.digits_source import digit_images, split_indices
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

#: name -> (number of classes, label function of the digit tensor, description)
ATTRIBUTES: dict[str, tuple[int, Callable[[Tensor], Tensor], str]] = {
    "digit": (10, lambda d: d, "which digit (0-9)"),
    "even": (2, lambda d: (d % 2 == 0).long(), "the digit is even"),
    "large": (2, lambda d: (d >= 5).long(), "the digit is 5 or more"),
    "prime": (2, lambda d: ((d == 2) | (d == 3) | (d == 5) | (d == 7)).long(), "the digit is prime"),
    "mod3": (3, lambda d: d % 3, "the digit modulo 3"),
    "loop": (2, lambda d: ((d == 0) | (d == 6) | (d == 8) | (d == 9)).long(), "the digit has a closed loop"),
}


@register("digits-attributes", "6 attribute tasks (digit, even, large, prime, mod3, loop) of the same images")
def digits_attributes(
    *, test_size: PositiveInt = 360, val_size: PositiveInt = 360, split_seed: NonNegativeInt = 0
) -> Setting:
    images, digits = digit_images()
    train_size = len(digits) - test_size - val_size
    if min(test_size, val_size) < 1 or train_size < 1:
        raise ValueError(
            f"digits-attributes options test_size and val_size must be >= 1 and leave training images, "
            f"got test_size={test_size}, val_size={val_size}"
        )
    test_idx, val_idx, train_idx = split_indices(len(digits), [test_size, val_size, train_size], split_seed)
    data = {
        split: (images[index], {name: label(digits[index]) for name, (_, label, _) in ATTRIBUTES.items()})
        for split, index in (("train", train_idx), ("val", val_idx), ("test", test_idx))
    }
    tasks = [
        TaskSpec(name, classes, loss=cross_entropy(), metrics=(accuracy(), macro_f1()), description=description)
        for name, (classes, _, description) in ATTRIBUTES.items()
    ]
    return from_arrays(
        "digits-attributes",
        tasks,
        data,
        layout="shared-input",
        default_model={"encoder": {"name": "lenet"}, "head": {"name": "linear"}},
        description="six attribute tasks of the same digit images (CelebA analogue)",
        reference="Fifty et al. Efficiently Identifying Task Groupings for Multi-Task Learning. NeurIPS 2021",
        options={"test_size": test_size, "val_size": val_size, "split_seed": split_seed},
    )
