from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlscope import settings
from mtlscope.settings.digits_source import digit_images


def test_sizes_and_layout() -> None:
    setting = settings.get("digits-mtl")
    assert setting.layout == "multi-input"
    assert setting.task_names == ("digits1", "digits2", "noisy-digits")
    d1, d2, noisy = setting.tasks
    assert (len(d1.train), len(d1.val), len(d1.test)) == (150, 300, 500)
    assert len(d2.train) == 1797 - 500 - 300 - 150
    assert len(noisy.train) == len(d2.train)
    assert setting.input_shape == (1, 8, 8)
    assert setting.epoch_examples == len(d2.train)


def test_splits_are_disjoint_and_cover_the_data() -> None:
    setting = settings.get("digits-mtl")
    d1, d2, _ = setting.tasks
    parts = [d1.train.inputs, d2.train.inputs, d1.val.inputs, d1.test.inputs]
    total = sum(len(p) for p in parts)
    assert total == 1797
    all_images, _ = digit_images()
    # images may repeat in the raw data, so compare multisets of rows through sorting
    stacked = torch.cat([p.reshape(len(p), -1) for p in parts]).numpy()
    original = all_images.reshape(len(all_images), -1).numpy()
    assert np.array_equal(np.sort(stacked, axis=0), np.sort(original, axis=0))
    # index-level disjointness: a fresh split with the same seed gives the same blocks
    from mtlscope.settings.digits_source import split_indices

    blocks = split_indices(1797, [500, 300, 150, 847], 0)
    flat = np.concatenate(blocks)
    assert len(np.unique(flat)) == len(flat) == 1797


def test_digits2_and_digits1_share_evaluation_data_and_labels_are_true() -> None:
    setting = settings.get("digits-mtl")
    d1, d2, _ = setting.tasks
    assert torch.equal(d1.val.inputs, d2.val.inputs) and torch.equal(d1.test.targets, d2.test.targets)
    images, labels = digit_images()
    lookup = {row.numpy().tobytes(): int(y) for row, y in zip(images.reshape(len(images), -1), labels)}
    for task in (d1, d2):
        for split in ("train", "val", "test"):
            data = task.split(split)
            agree = [
                lookup[row.numpy().tobytes()] == int(y)
                for row, y in zip(data.inputs.reshape(len(data), -1), data.targets)
            ]
            assert np.mean(agree) > 0.99  # duplicated images with other labels are rare


def test_noisy_labels_are_a_permutation_of_digits2_labels() -> None:
    setting = settings.get("digits-mtl")
    _, d2, noisy = setting.tasks
    assert torch.equal(noisy.train.inputs, d2.train.inputs)
    assert torch.equal(torch.sort(noisy.train.targets).values, torch.sort(d2.train.targets).values)
    agreement = float((noisy.train.targets == d2.train.targets).float().mean())
    assert agreement < 0.2  # chance is about 0.1; the true labels would give 1.0
    assert float((noisy.test.targets == d2.test.targets).float().mean()) < 0.2


def test_same_seed_same_setting_other_seed_other_split() -> None:
    a, b = settings.get("digits-mtl"), settings.get("digits-mtl")
    c = settings.get("digits-mtl", split_seed=1)
    assert torch.equal(a.tasks[0].train.inputs, b.tasks[0].train.inputs)
    assert not torch.equal(a.tasks[0].train.inputs, c.tasks[0].train.inputs)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="digits1_size"):
        settings.get("digits-mtl", digits1_size=5000)
    with pytest.raises(ValueError, match="no option 'digits3_size'"):
        settings.get("digits-mtl", digits3_size=3)
    with pytest.raises(KeyError, match="unknown setting"):
        settings.get("nope")
