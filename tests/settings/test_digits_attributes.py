from __future__ import annotations

import torch

from mtlscope import settings


def test_tasks_share_inputs_and_labels_follow_the_digit() -> None:
    setting = settings.get("digits-attributes")
    assert setting.layout == "shared-input"
    assert len(setting.tasks) >= 6
    digit = setting.task("digit")
    for task in setting.tasks:
        assert task.train.inputs is digit.train.inputs
    d = digit.train.targets
    assert torch.equal(setting.task("even").train.targets, (d % 2 == 0).long())
    assert torch.equal(setting.task("large").train.targets, (d >= 5).long())
    assert torch.equal(setting.task("prime").train.targets, torch.isin(d, torch.tensor([2, 3, 5, 7])).long())
    assert torch.equal(setting.task("mod3").train.targets, d % 3)
    assert torch.equal(setting.task("loop").train.targets, torch.isin(d, torch.tensor([0, 6, 8, 9])).long())
    assert [t.output_size for t in setting.tasks] == [10, 2, 2, 2, 3, 2]
    assert len(digit.train) + len(digit.val) + len(digit.test) == 1797


def test_subset_keeps_sharing_and_epoch_size() -> None:
    setting = settings.get("digits-attributes", tasks=["even", "digit"])
    assert setting.task_names == ("even", "digit")
    assert setting.task("even").train.inputs is setting.task("digit").train.inputs
    moved = setting.to("cpu")
    assert moved.task("even").val.inputs is moved.task("digit").val.inputs
