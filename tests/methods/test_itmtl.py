"""IT-MTL (Fifty et al. 2020, §4): candidate specs, transference scores against closed forms on a quadratic
model, exact vs first-order, the one-candidate invariant, state round-trip, end-to-end training."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import pytest
import torch
from torch import Tensor

import mtlscope.methods.itmtl as itmtl
from mtlscope import methods, settings
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.methods import pcgrad
from mtlscope.methods.base import StepInput
from mtlscope.methods.uncertainty import UncertaintyWeighting
from mtlscope.models import build_model
from tests.methods.helpers import random_jacobian, step_input, total_train_loss, train_digits

DTYPE = torch.float64


class QuadraticLookahead:
    """A fake ``Lookahead`` on quadratic task losses ``L_j(t) = 0.5 (t - a_j)^T H_j (t - a_j) + c_j`` at
    ``t = theta``; the optimizer update is ``-lr * g`` (SGD) unless ``rule`` is given."""

    def __init__(
        self,
        theta: Tensor,
        centers: Tensor,
        hessians: Tensor,
        offsets: Tensor,
        lr: float,
        rule: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.theta, self.centers, self.hessians, self.offsets = theta, centers, hessians, offsets
        self.lr = lr
        self.rule = rule
        self.forwards = 0

    def losses_at(self, point: Tensor) -> Tensor:
        diff = point[None, :] - self.centers
        return 0.5 * torch.einsum("kp,kpq,kq->k", diff, self.hessians, diff) + self.offsets

    def jacobian(self) -> Tensor:
        return torch.einsum("kpq,kq->kp", self.hessians, self.theta[None, :] - self.centers)

    def update(self, shared_gradient: Tensor) -> Tensor:
        if self.rule is not None:
            return self.rule(shared_gradient)
        return -self.lr * shared_gradient

    def losses(self, delta: Tensor) -> Tensor:
        self.forwards += 1
        return self.losses_at(self.theta + delta)


def random_quadratic(num_tasks: int, dim: int, seed: int, lr: float) -> QuadraticLookahead:
    generator = torch.Generator().manual_seed(seed)
    factors = torch.randn(num_tasks, dim, dim, generator=generator, dtype=DTYPE)
    hessians = factors @ factors.transpose(1, 2) / dim + 0.1 * torch.eye(dim, dtype=DTYPE)
    centers = torch.randn(num_tasks, dim, generator=generator, dtype=DTYPE)
    offsets = torch.rand(num_tasks, generator=generator, dtype=DTYPE) * 3
    theta = torch.randn(dim, generator=generator, dtype=DTYPE)
    return QuadraticLookahead(theta, centers, hessians, offsets, lr)


def quadratic_step(model: QuadraticLookahead, *, loss_scale: float = 1.0, seed: int = 0) -> StepInput:
    return step_input(model.jacobian(), model.losses_at(model.theta), loss_scale=loss_scale, seed=seed, lookahead=model)


def closed_form_score(model: QuadraticLookahead, gradient: Tensor) -> float:
    """SPEC §4.5: with Delta = -lr g, ``Z_{g->j} = (lr g_j.g - 0.5 lr^2 g^T H_j g) / L_j``, summed over j."""
    jacobian, losses, lr = model.jacobian(), model.losses_at(model.theta), model.lr
    curvature = torch.einsum("p,kpq,q->k", gradient, model.hessians, gradient)
    return float(((lr * jacobian @ gradient - 0.5 * lr**2 * curvature) / losses).sum())


def built(candidates: object = itmtl.DEFAULT_CANDIDATES, tasks: Sequence[str] = ("task0", "task1"), **options: object):
    method = methods.get("it_mtl", candidates=candidates, **options)
    method.setup(tuple(tasks))
    return method


def scores_of(diagnostics: Mapping[str, float]) -> list[float]:
    """The per-candidate scores ``score_<i>`` in candidate order."""
    count = sum(key.startswith("score_") for key in diagnostics)
    return [diagnostics[f"score_{index}"] for index in range(count)]


# --- candidate specs ---------------------------------------------------------------------------------------


def test_candidate_specs_expand_in_documented_order_without_duplicates() -> None:
    resolved = itmtl.resolve_candidates(
        ["singles", "pairs", "umtg", "pcgrad", "uw", "uw_pcgrad", "b", ["c", "a"], "all"], ("a", "b", "c")
    )
    labels = [candidate.label for candidate in resolved]
    # "b" repeats the single {b}, ["c", "a"] the pair {a, c}, "all" the UMTG: each kept once, first position.
    assert labels == ["a", "b", "c", "a+b", "a+c", "b+c", "umtg", "pcgrad", "uw", "uw_pcgrad"]
    assert [candidate.tasks for candidate in resolved[:6]] == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]
    assert resolved[6].tasks == (0, 1, 2)


def test_subsets_keyword_and_explicit_subsets() -> None:
    resolved = itmtl.resolve_candidates(["subsets"], ("a", "b", "c"))
    assert [c.label for c in resolved] == ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]
    # A task named like a keyword: the bare string is the keyword, a one-element list is the task.
    resolved = itmtl.resolve_candidates([["pcgrad"], "pcgrad", "all"], ("pcgrad", "x"))
    assert [(c.kind, c.tasks, c.label) for c in resolved] == [
        ("subset", (0,), "pcgrad"),
        ("pcgrad", (0, 1), "pcgrad"),
        ("subset", (0, 1), "all"),
    ]
    # A bare string is accepted as a one-entry list.
    assert [c.label for c in itmtl.resolve_candidates("singles", ("a", "b"))] == ["a", "b"]


@pytest.mark.parametrize(
    ("candidates", "message"),
    [
        (["singles", "nope"], "unknown candidate 'nope'"),
        ([["a", "zzz"]], "task 'zzz'"),
        ([], "non-empty list"),
        ([[]], "non-empty list of task names"),
        ([3], "non-empty list of task names"),
        ([["a", 1]], "non-empty list of task names"),
    ],
)
def test_bad_candidate_specs_are_config_errors(candidates: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        itmtl.resolve_candidates(candidates, ("a", "b"))  # type: ignore[arg-type]
    # through the registry, a malformed list is refused by the option's declared type, before the builder runs
    with pytest.raises(ValueError, match=f"{message}|method.candidates: expected a string or a non-empty list"):
        method = methods.get("it_mtl", candidates=candidates)
        method.setup(("a", "b"))


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ValueError, match="approximation"):
        methods.get("it_mtl", approximation="second_order")
    with pytest.raises(ValueError, match="uw_options"):
        methods.get("it_mtl", uw_options={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="lr"):
        methods.get("it_mtl", uw_options={"lr": -1.0})
    with pytest.raises(ValueError, match="uw_options: expected a mapping"):
        methods.get("it_mtl", uw_options=[0.1])
    with pytest.raises(ValueError, match="no option 'candidate'"):
        methods.get("it_mtl", candidate=["umtg"])


def test_needs_and_missing_inputs() -> None:
    method = built()
    assert method.needs == frozenset({"jacobian", "lookahead"})
    jacobian = random_jacobian(2, 5)
    with pytest.raises(ValueError, match="lookahead"):
        method.combine(step_input(jacobian))
    with pytest.raises(ValueError, match="jacobian"):
        method.combine(step_input(losses=torch.ones(2, dtype=DTYPE), lookahead=random_quadratic(2, 5, 0, 0.1)))


# --- SPEC §5: one candidate is that candidate ---------------------------------------------------------------


@pytest.mark.parametrize("approximation", ["exact", "first_order"])
@pytest.mark.parametrize("spec", ["umtg", "task1", ["task0", "task2"], "pcgrad", "uw", "uw_pcgrad"])
def test_one_candidate_is_that_candidate(spec: object, approximation: str) -> None:
    model = random_quadratic(3, 6, seed=1, lr=0.05)
    jacobian, loss_scale, seed = model.jacobian(), 2.0, 7
    method = built([spec], ("task0", "task1", "task2"), approximation=approximation)
    combination = method.combine(quadratic_step(model, loss_scale=loss_scale, seed=seed))

    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(seed)  # the step's generator, fresh for each expectation

    uw = UncertaintyWeighting()
    uw.setup(("task0", "task1", "task2"))
    weights = uw.current_weights().to(jacobian)
    expected = {
        "umtg": jacobian.sum(0) / loss_scale,
        "task1": jacobian[1] / loss_scale,
        "pcgrad": pcgrad.aggregate(jacobian, generator=generator(), loss_scale=loss_scale),
        "uw": weights @ jacobian / loss_scale,
        "uw_pcgrad": pcgrad.aggregate(weights[:, None] * jacobian, generator=generator(), loss_scale=loss_scale),
    }.get(spec if isinstance(spec, str) else "", (jacobian[0] + jacobian[2]) / loss_scale)
    assert combination.shared_gradient is not None
    torch.testing.assert_close(combination.shared_gradient, expected.to(DTYPE))
    assert combination.diagnostics["chosen_candidate"] == 0


def test_uw_candidate_follows_the_uncertainty_weights() -> None:
    """After some steps the UW weights move away from 1, and the 'uw' candidate follows a UW run's weights."""
    tasks = ("task0", "task1")
    method = built(["uw"], tasks, uw_options={"lr": 0.1})
    reference = UncertaintyWeighting(lr=0.1)
    reference.setup(tasks)
    model = random_quadratic(2, 4, seed=3, lr=0.01)
    for step in range(5):
        losses = torch.tensor([0.2 + step, 5.0], dtype=DTYPE)
        weights = reference.current_weights().to(DTYPE)
        step_in = step_input(model.jacobian(), losses, loss_scale=1.5, step=step, lookahead=model)
        combination = method.combine(step_in)
        reference.update(losses)
        assert combination.shared_gradient is not None
        torch.testing.assert_close(combination.shared_gradient, weights @ model.jacobian() / 1.5)
        assert combination.diagnostics["uw_weight/task0"] == pytest.approx(float(weights[0]))
    assert not torch.allclose(reference.current_weights(), torch.ones(2, dtype=DTYPE))


# --- the transference scores and the argmax -----------------------------------------------------------------


def test_hand_computed_case_picks_the_single_task() -> None:
    """g_0 = (1, 0), g_1 = (-1, 0), H = I, L = (1, 10), lr = 0.1: the UMTG is 0 (score 0); the step on task 0
    alone gives L = (0.905, 10.105), score 0.095 - 0.0105 = 0.0845; on task 1 alone L = (1.105, 9.905), score
    -0.105 + 0.0095 = -0.0955. First order: 0.1 * (1 - 0.1) = 0.09, -0.09 and 0."""
    eye = torch.eye(2, dtype=DTYPE).expand(2, 2, 2)
    model = QuadraticLookahead(
        torch.zeros(2, dtype=DTYPE),
        torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=DTYPE),
        eye,
        torch.tensor([0.5, 9.5], dtype=DTYPE),
        lr=0.1,
    )
    torch.testing.assert_close(model.jacobian(), torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=DTYPE))
    torch.testing.assert_close(model.losses_at(model.theta), torch.tensor([1.0, 10.0], dtype=DTYPE))
    for approximation, scores in [("exact", [0.0845, -0.0955, 0.0]), ("first_order", [0.09, -0.09, 0.0])]:
        method = built(["singles", "umtg"], approximation=approximation)
        combination = method.combine(quadratic_step(model))
        diagnostics = combination.diagnostics
        assert scores_of(diagnostics) == pytest.approx(scores, abs=1e-12)
        assert diagnostics["chosen_candidate"] == 0
        assert diagnostics["chosen_score"] == pytest.approx(scores[0], abs=1e-12)
        assert combination.shared_gradient is not None
        torch.testing.assert_close(combination.shared_gradient, model.jacobian()[0])


def test_exact_scores_match_the_closed_form_and_the_argmax_is_chosen() -> None:
    """On random quadratics, each candidate's score is SPEC §4.5's closed form, and the argmax is returned."""
    tasks = ("task0", "task1", "task2")
    winners = set()
    for seed in range(12):
        model = random_quadratic(3, 5, seed=seed, lr=0.5)
        method = built(["subsets", "pcgrad"], tasks)
        combination = method.combine(quadratic_step(model, loss_scale=1.0, seed=seed))
        candidates = itmtl.candidate_gradients(
            model.jacobian(), method.candidates, generator=torch.Generator().manual_seed(seed)
        )
        expected = [closed_form_score(model, gradient) for gradient in candidates]
        scores = scores_of(combination.diagnostics)
        assert scores == pytest.approx(expected, rel=1e-9, abs=1e-12)
        best = max(range(len(expected)), key=expected.__getitem__)
        assert combination.diagnostics["chosen_candidate"] == best
        assert combination.shared_gradient is not None
        torch.testing.assert_close(combination.shared_gradient, candidates[best])
        assert model.forwards == len(candidates) + 1  # exact: one forward per candidate, one for the baseline
        winners.add(best)
    assert len(winners) > 1, "the test cases should not all have the same winner"


def test_first_order_scores_use_the_optimizer_update_and_no_forward() -> None:
    """First order: -sum_j <g_j, Delta> / L_j with Delta from the lookahead's update rule (here sign-SGD,
    unlike the raw gradient), and no lookahead forward."""
    model = random_quadratic(3, 5, seed=4, lr=0.1)
    model.rule = lambda gradient: -0.01 * torch.sign(gradient)
    method = built(["singles", "pairs", "umtg"], ("task0", "task1", "task2"), approximation="first_order")
    combination = method.combine(quadratic_step(model))
    jacobian, losses = model.jacobian(), model.losses_at(model.theta)
    candidates = itmtl.candidate_gradients(jacobian, method.candidates)
    expected = [float(sum(jacobian[j] @ (0.01 * torch.sign(g)) / losses[j] for j in range(3))) for g in candidates]
    scores = scores_of(combination.diagnostics)
    assert scores == pytest.approx(expected, rel=1e-12)
    assert combination.diagnostics["chosen_candidate"] == max(range(len(expected)), key=expected.__getitem__)
    assert model.forwards == 0


def test_exact_and_first_order_agree_as_the_step_size_vanishes() -> None:
    """The gap is the second-order term 0.5 lr^2 g^T H_j g / L_j: relative to the first-order score it
    shrinks like lr, and the chosen candidate agrees for small steps."""
    tasks = ("task0", "task1", "task2")
    for seed in range(4):
        gaps = []
        for lr in (1e-1, 1e-2, 1e-3, 1e-4):
            model = random_quadratic(3, 5, seed=seed, lr=lr)
            exact = built(["subsets"], tasks, approximation="exact").combine(quadratic_step(model))
            first = built(["subsets"], tasks, approximation="first_order").combine(quadratic_step(model))
            e = torch.tensor(scores_of(exact.diagnostics))
            f = torch.tensor(scores_of(first.diagnostics))
            gaps.append(float((e - f).abs().max() / f.abs().max()))
            if lr <= 1e-3:
                assert exact.diagnostics["chosen_candidate"] == first.diagnostics["chosen_candidate"]
        for larger, smaller in itertools.pairwise(gaps):
            assert smaller == pytest.approx(larger / 10, rel=0.05)
        assert gaps[-1] < 1e-3


def test_pure_aggregate_without_lookahead_is_the_papers_first_order_rule() -> None:
    """Without a lookahead: argmax over candidates of <sum_j g_j / L_j, g_phi> (Fifty et al., §4.1)."""
    for seed in range(5):
        jacobian = random_jacobian(3, 8, seed=seed)
        losses = torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE) + 0.1
        result = itmtl.aggregate(jacobian, losses, ["singles", "pairs", "umtg"], loss_scale=3.0)
        resolved = itmtl.resolve_candidates(["singles", "pairs", "umtg"], ("task0", "task1", "task2"))
        candidates = itmtl.candidate_gradients(jacobian, resolved, loss_scale=3.0)
        scores = candidates @ ((1 / losses) @ jacobian)
        torch.testing.assert_close(result, candidates[int(scores.argmax())])
    with pytest.raises(ValueError, match="lookahead"):
        itmtl.aggregate(jacobian, losses, approximation="exact")


def test_equal_task_gradients_give_the_umtg() -> None:
    """All gradients equal g: candidates are |S|/C g, the UMTG and PCGrad K/C g. With an SGD update the
    first-order score is linear in the step, so the UMTG (first of the largest) wins; the exact score too
    for a small step."""
    g = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=DTYPE)
    hessian = torch.eye(4, dtype=DTYPE).expand(3, 4, 4)
    model = QuadraticLookahead(torch.zeros(4, dtype=DTYPE), -g.expand(3, 4), hessian, torch.ones(3, dtype=DTYPE), 1e-3)
    torch.testing.assert_close(model.jacobian(), g.expand(3, 4))
    for approximation in ("first_order", "exact"):
        method = built(["singles", "pairs", "umtg", "pcgrad"], ("task0", "task1", "task2"), approximation=approximation)
        combination = method.combine(quadratic_step(model, loss_scale=2.0))
        assert combination.shared_gradient is not None
        torch.testing.assert_close(combination.shared_gradient, 3 * g / 2.0)
        assert method.candidate_labels[int(combination.diagnostics["chosen_candidate"])] == "umtg"


def test_non_finite_scores_are_never_chosen() -> None:
    assert itmtl.choose(torch.tensor([float("nan"), 1.0, float("inf"), 2.0, 2.0])) == 3
    assert itmtl.choose(torch.tensor([float("nan"), float("nan")])) == 0
    assert itmtl.total_transference(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 5.0])).item() == pytest.approx(0.25)


def test_works_in_float32() -> None:
    model = random_quadratic(2, 4, seed=0, lr=0.1)
    model.theta, model.centers = model.theta.float(), model.centers.float()
    model.hessians, model.offsets = model.hessians.float(), model.offsets.float()
    combination = built().combine(quadratic_step(model))
    assert combination.shared_gradient is not None
    assert combination.shared_gradient.dtype == torch.float32


# --- state --------------------------------------------------------------------------------------------------


def test_state_round_trip_continues_identically() -> None:
    tasks = ("task0", "task1", "task2")
    candidates = ["singles", "uw", "uw_pcgrad", "pcgrad"]
    first = built(candidates, tasks, uw_options={"lr": 0.2})
    second = built(candidates, tasks, uw_options={"lr": 0.2})

    def run(method: itmtl.ITMTL, step: int) -> tuple[Tensor, dict[str, float]]:
        model = random_quadratic(3, 5, seed=100 + step, lr=0.3)
        combination = method.combine(quadratic_step(model, seed=step))
        assert combination.shared_gradient is not None
        return combination.shared_gradient, dict(combination.diagnostics)

    for step in range(4):
        run(first, step)
    state = first.state_dict()
    assert set(state) == {"uw"}
    assert not torch.allclose(state["uw"]["log_variances"]["value"], torch.zeros(3, dtype=torch.float64))
    second.load_state_dict(state)
    for step in range(4, 8):
        gradient_a, diagnostics_a = run(first, step)
        gradient_b, diagnostics_b = run(second, step)
        torch.testing.assert_close(gradient_a, gradient_b, rtol=0, atol=0)
        assert diagnostics_a == diagnostics_b

    # A method without UW candidates is stateless; mismatched states are errors.
    plain = built(["singles", "umtg"], tasks)
    assert plain.state_dict() == {}
    plain.load_state_dict({})
    with pytest.raises(ValueError, match="no candidate uses them"):
        plain.load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        second.load_state_dict({})
    with pytest.raises(ValueError, match="unexpected state keys"):
        second.load_state_dict({**state, "extra": 1})


def test_setup_reinitializes() -> None:
    method = built(["uw"], ("task0", "task1"))
    model = random_quadratic(2, 3, seed=0, lr=0.1)
    for step in range(3):
        method.combine(step_input(model.jacobian(), torch.tensor([3.0, 0.1], dtype=DTYPE), step=step, lookahead=model))
    assert not torch.allclose(method.state_dict()["uw"]["log_variances"]["value"], torch.zeros(2, dtype=torch.float64))
    method.setup(("a", "b", "c"))
    assert method.candidate_labels == ("uw",)
    torch.testing.assert_close(method.state_dict()["uw"]["log_variances"]["value"], torch.zeros(3, dtype=torch.float64))


# --- end to end ---------------------------------------------------------------------------------------------


def test_training_lowers_the_loss() -> None:
    loss = total_train_loss(train_digits("it_mtl", epochs=2))
    assert loss.iloc[-1] < 0.6 * loss.iloc[0]


def test_training_records_the_chosen_candidate() -> None:
    """First order, the paper's IT-PCGrad candidates, per-step diagnostics: the run trains and logs its choices."""
    chosen = settings.get("digits-mtl", tasks=["digits1", "digits2"])
    model = build_model(chosen, {"name": "mlp", "hidden": [64, 16]}, {"name": "linear"}, 0)
    steps_per_epoch = chosen.steps_per_epoch(32)
    sink = ListSink()
    outcome = Trainer(
        chosen,
        model,
        methods.get("it_mtl", candidates=["singles", "umtg", "pcgrad"], approximation="first_order"),
        build_optimizer(model.parameters(), "adam", 3e-3),
        schedule=Schedule(2 * steps_per_epoch, steps_per_epoch, steps_per_epoch),
        batch_size=32,
        loss_scale=2.0,
        seed=0,
        sink=sink,
        diagnostics_every=1,
    ).run()
    assert outcome.status == "completed", outcome.message
    records = pd.DataFrame(sink.records)
    loss = total_train_loss(records)
    assert loss.iloc[-1] < 0.6 * loss.iloc[0]
    step = records[records["split"] == "step"]
    picks = step[step["metric"] == "chosen_candidate"]["value"]
    assert len(picks) == 2 * steps_per_epoch
    assert set(picks) <= {0.0, 1.0, 2.0, 3.0}
    assert {"chosen_score", "score_0", "score_1", "score_2", "score_3"} <= set(step["metric"])
    # The logged score of the chosen candidate is the largest of the step's scores.
    wide = step[step["metric"].str.startswith("score_")].pivot_table(index="step", columns="metric", values="value")
    best = step[step["metric"] == "chosen_score"].set_index("step")["value"]
    pd.testing.assert_series_equal(wide.max(axis=1), best, check_names=False)
