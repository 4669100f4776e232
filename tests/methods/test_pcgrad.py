"""PCGrad (Yu et al., NeurIPS 2020): hand-computed cases, SPEC §5 invariants, agreement with TorchJD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import mtlscope.methods.pcgrad  # noqa: F401  (registration)
from mtlscope import methods
from mtlscope.methods import pcgrad
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits


def naive_pcgrad(jacobian: Tensor, generator: torch.Generator | None) -> Tensor:
    """Algorithm 1 on the vectors themselves (no Gramian, no coefficients), same order draws."""
    num_tasks = jacobian.shape[0]
    total = torch.zeros_like(jacobian[0])
    for i in range(num_tasks):
        order = list(range(num_tasks)) if generator is None else torch.randperm(num_tasks, generator=generator).tolist()
        g = jacobian[i].clone()
        for j in order:
            if j != i and g @ jacobian[j] < 0:
                g = g - (g @ jacobian[j]) / (jacobian[j] @ jacobian[j]) * jacobian[j]
        total += g
    return total


def test_hand_computed_two_tasks() -> None:
    # g1 = [1, 0], g2 = [-1, 1]: g1.g2 = -1 < 0.
    # g1^PC = g1 + (1/2) g2 = [0.5, 0.5]; g2^PC = g2 + g1 = [0, 1]; sum [0.5, 1.5] = 2 g1 + 1.5 g2.
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    for generator in (None, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)):
        torch.testing.assert_close(pcgrad.aggregate(jacobian, generator), torch.tensor([0.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(pcgrad.weights(jacobian), torch.tensor([2.0, 1.5], dtype=torch.float64))
    # the other order of the tasks: same update, weights swapped
    swapped = jacobian.flip(0)
    torch.testing.assert_close(pcgrad.aggregate(swapped), torch.tensor([0.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(pcgrad.weights(swapped), torch.tensor([1.5, 2.0], dtype=torch.float64))
    # C = K = 2 averages
    torch.testing.assert_close(
        pcgrad.aggregate(jacobian, loss_scale=2.0), torch.tensor([0.25, 0.75], dtype=torch.float64)
    )


def test_hand_computed_three_tasks_index_order() -> None:
    # g1 = [1, 0], g2 = [-1, 1], g3 = [0, -1], index order (generator=None).
    # i=1: vs g2: 1.g2 = -1 -> g1 + g2/2 = [.5, .5]; vs g3: -.5 -> + .5 g3 = [.5, 0].
    # i=2: vs g1: -1 -> g2 + g1 = [0, 1]; vs g3: -1 -> + g3 = [0, 0].
    # i=3: vs g1: 0 (no conflict); vs g2: -1 -> g3 + g2/2 = [-.5, -.5].
    # sum [0, -.5]; coefficients: g1: 1 + 1 = 2, g2: .5 + 1 + .5 = 2, g3: .5 + 1 + 1 = 2.5.
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(pcgrad.weights(jacobian), torch.tensor([2.0, 2.0, 2.5], dtype=torch.float64))
    torch.testing.assert_close(pcgrad.aggregate(jacobian), torch.tensor([0.0, -0.5], dtype=torch.float64))
    # the reverse order (g3, g2, g1 visited last to first) differs: the order matters for K > 2
    reverse = pcgrad.weights(jacobian.flip(0)).flip(0)
    assert not torch.allclose(reverse, torch.tensor([2.0, 2.0, 2.5], dtype=torch.float64))


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_matches_naive_vector_algorithm(num_tasks: int) -> None:
    for seed in range(5):
        jacobian = random_jacobian(num_tasks, 20, seed=seed)
        ours = pcgrad.aggregate(jacobian, torch.Generator().manual_seed(seed))
        expected = naive_pcgrad(jacobian, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(ours, expected)
        torch.testing.assert_close(pcgrad.aggregate(jacobian), naive_pcgrad(jacobian, None))


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_weights_times_jacobian_is_aggregate(num_tasks: int) -> None:
    jacobian = random_jacobian(num_tasks, 50, seed=num_tasks)
    for loss_scale in (1.0, math.sqrt(num_tasks), float(num_tasks)):
        w = pcgrad.weights(jacobian, torch.Generator().manual_seed(7), loss_scale)
        d = pcgrad.aggregate(jacobian, torch.Generator().manual_seed(7), loss_scale)
        assert w.shape == (num_tasks,)
        torch.testing.assert_close(w @ jacobian, d)


def test_two_task_invariants() -> None:
    for seed in range(50):
        jacobian = random_jacobian(2, 10, seed=seed)
        d = pcgrad.aggregate(jacobian, torch.Generator().manual_seed(seed))
        assert (jacobian @ d >= -1e-10).all(), (seed, jacobian @ d)
        if jacobian[0] @ jacobian[1] >= 0:
            torch.testing.assert_close(d, jacobian.sum(0))


def test_no_conflict_is_plain_sum_divided_by_c() -> None:
    jacobian = random_jacobian(4, 30, seed=1).abs()  # all inner products positive
    for loss_scale in (1.0, 2.0, 4.0):
        torch.testing.assert_close(
            pcgrad.aggregate(jacobian, torch.Generator().manual_seed(0), loss_scale), jacobian.sum(0) / loss_scale
        )


def test_equal_gradients_give_umtg() -> None:
    from mtlscope.methods import umtg

    g = random_jacobian(1, 30, seed=2)
    for num_tasks in (2, 3, 6):
        jacobian = g.expand(num_tasks, -1).clone()
        for loss_scale in (1.0, math.sqrt(num_tasks), float(num_tasks)):
            torch.testing.assert_close(
                pcgrad.aggregate(jacobian, torch.Generator().manual_seed(0), loss_scale),
                umtg.aggregate(jacobian, loss_scale),
            )


def test_projection_removes_conflict_with_each_visited_gradient_k2() -> None:
    # for K = 2 each projected gradient is orthogonal to the other original gradient when they conflict
    jacobian = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 0.5, 3.0]], dtype=torch.float64)
    assert jacobian[0] @ jacobian[1] < 0
    w = pcgrad.weights(jacobian)
    # g1^PC = g1 - (g1.g2/|g2|^2) g2  -> coefficient on g2 is -g1.g2/|g2|^2, etc.
    g12 = float(jacobian[0] @ jacobian[1])
    expected = torch.tensor(
        [1.0 - g12 / float(jacobian[0] @ jacobian[0]), 1.0 - g12 / float(jacobian[1] @ jacobian[1])],
        dtype=torch.float64,
    )
    torch.testing.assert_close(w, expected)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
def test_agrees_with_torchjd(num_tasks: int) -> None:
    torchjd = pytest.importorskip(
        "torchjd", reason="TorchJD not installed: agreement with the reference implementation not checked"
    )
    from torchjd.aggregation import PCGrad

    reference = PCGrad()
    for seed in range(5):
        jacobian = random_jacobian(num_tasks, 40, seed=100 + seed)
        # TorchJD draws torch.randperm(K) per task from the global generator and skips i, as we do from ours
        torch.manual_seed(seed)
        expected = reference(jacobian)
        ours = pcgrad.aggregate(jacobian, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(ours, expected)
    assert torchjd is not None


def test_dtype_and_generator_use() -> None:
    jacobian = random_jacobian(4, 16, seed=5, dtype=torch.float32)
    generator = torch.Generator().manual_seed(11)
    before = generator.get_state()
    global_before = torch.get_rng_state()
    d = pcgrad.aggregate(jacobian, generator)
    assert d.dtype == torch.float32 and d.shape == (16,)
    assert not torch.equal(generator.get_state(), before)  # draws came from the given generator
    assert torch.equal(torch.get_rng_state(), global_before)  # never from the global one
    assert pcgrad.weights(jacobian, generator).dtype == torch.float32


def test_bad_inputs() -> None:
    jacobian = random_jacobian(2, 4)
    with pytest.raises(ValueError, match="loss_scale"):
        pcgrad.aggregate(jacobian, loss_scale=0.0)
    with pytest.raises(ValueError, match=r"\[K, P\]"):
        pcgrad.aggregate(torch.ones(3))
    with pytest.raises(ValueError, match="no option"):
        methods.get("pcgrad", reduction="mean")


def test_method_combine_matches_pure_function_and_diagnostics() -> None:
    method = methods.get("pcgrad")
    assert method.needs == frozenset({"jacobian"})
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    method.setup(("task0", "task1"))
    combination = method.combine(step_input(jacobian, loss_scale=2.0))
    assert combination.loss_weights is None and combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert combination.diagnostics["weight/task0"] == pytest.approx(1.0)
    assert combination.diagnostics["weight/task1"] == pytest.approx(0.75)
    assert combination.diagnostics["conflict_frac"] == 1.0
    assert combination.diagnostics["projections"] == 2.0

    jacobian = random_jacobian(5, 12, seed=4)
    method.setup(tuple(f"task{k}" for k in range(5)))
    combination = method.combine(step_input(jacobian, seed=9))
    expected = pcgrad.aggregate(jacobian, torch.Generator().manual_seed(9))
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, expected)
    with pytest.raises(ValueError, match="Jacobian"):
        method.combine(step_input(None, torch.ones(5, dtype=torch.float64)))


def test_trains_digits() -> None:
    records = train_digits("pcgrad")
    loss = total_train_loss(records)
    assert loss.iloc[-1] < 0.6 * loss.iloc[0]
