"""IT-MTL: increased-transfer multi-task learning (Fifty, Amid, Zhao, Yu, Anil & Finn, "Measuring and
Harnessing Transference in Multi-Task Learning", arXiv:2010.15413, 2020; §4, Algorithm 1).

At every step, IT-MTL builds a set of candidate shared gradients ``g_phi`` from the [K, P] Jacobian, simulates
the update ``Delta_phi`` the run's optimizer would make from each (``StepInput.lookahead.update``: momentum and
Adam state included, the real state untouched, as in the affinity probe), scores each by its *total
transference* onto the tasks (Fifty et al., eq. 2)

    Z_phi = sum_j ( 1 - L_j(theta + Delta_phi) / L_j(theta) ),

and returns the candidate with the highest score as the shared gradient (the optimizer then makes exactly
the simulated update). ``L_j(theta)`` are the step's task losses ``StepInput.losses``; ``L_j(theta + Delta)``
are the task losses on the same batch with the heads unchanged (``lookahead.losses``).

Approximation (option ``approximation``):

- ``"exact"`` (default): one simulated optimizer update and one forward pass per candidate.
- ``"first_order"``: the first-order Taylor expansion of eq. 2 (Fifty et al., §4.1),
  ``Z_phi ~ -sum_j <grad L_j, Delta_phi> / L_j = -<grad sum_j log L_j, Delta_phi>``: the gradient of the
  "log-product loss" from the Jacobian, no extra forward pass (one simulated update per candidate). For SGD
  (``Delta = -lr g``) this is ``lr <sum_j g_j / L_j, g_phi>``, the paper's formula.

Candidates (option ``candidates``, a list; its entries are expanded in order into the *resolved* candidate
list, whose index is logged as ``chosen_candidate``):

- ``"singles"``: one candidate per task ``{k}``, in the run's task order;
- ``"pairs"``: one per pair ``{i, j}``, ``i < j`` in lexicographic order of task positions;
- ``"subsets"``: every non-empty subset of the tasks, by size then lexicographically (2^K - 1 candidates);
- ``"all"`` / ``"umtg"``: all tasks, i.e. the UMTG ``(1/C) sum_k g_k`` (labels ``all`` / ``umtg``);
- ``"pcgrad"``: ``mtlscope.methods.pcgrad.aggregate(J, generator, loss_scale=C)`` (its random projection
  order is drawn from the run's method generator);
- ``"uw"``: the uncertainty-weighted combination ``(1/C) sum_k w_k g_k`` with the current weights of an
  ``mtlscope.methods.uncertainty.UncertaintyWeighting`` kept inside IT-MTL (Kendall et al., CVPR 2018),
  updated with the task losses at every step (after the candidates are built, as a UW run does);
- ``"uw_pcgrad"``: PCGrad applied to the uncertainty-weighted task gradients ``w_k g_k`` (the paper's
  UW-PCGrad candidate);
- any other string: the name of a task (the single-task subset ``{task}``); a list of task names: that
  subset (label ``"a+b"``). Keywords take precedence over task names in a bare string; write a task that is
  named like a keyword as a one-element list.

A subset ``S`` gives ``(1/C) sum_{k in S} g_k``. Every candidate is scaled by 1/C like the UMTG (the paper uses
C = 1, the plain sum of task losses). Duplicates (the same mechanism on the same tasks — ``"all"`` and
``"umtg"`` count as the same) are kept once, at their first position.

Default candidates: ``["singles", "umtg"]`` — the paper's IT-MTL on MultiMNIST/MultiFashion (Tables 2 and 5:
"choosing among the left image, right image, and combined gradient"). The paper's other variants are
``["umtg", "pcgrad"]`` (IT-PCGrad, §4 and §5.2: "J is composed of the typical MTL gradient and the PCGrad
gradient") and ``["uw", "uw_pcgrad"]`` (IT-UW-PCGrad: "choosing among the typical multi-task gradient and the
PCGrad gradient" on top of UW). The paper does not list IT-UW-MTL's set; ``["singles", "uw"]`` is the nearest
(its single-task candidates are unweighted here).

Options:
    candidates: list of candidate specs (above); default ``["singles", "umtg"]``.
    approximation: ``"exact"`` (default) or ``"first_order"``.
    uw_options: options of the uncertainty weighting behind ``"uw"``/``"uw_pcgrad"`` — ``lr`` (default 0.025)
        and ``init_log_variance`` (default 0.0), as for method ``uw``; ignored without such candidates.

Departures from the paper, all documented in docs/methods/itmtl.md: heads are not updated before the
lookahead (Algorithm 1, line 5, updates them first; they stay fixed here, as in the affinity probe by
default); in the exact mode the loss before the update is ``lookahead.losses(0)``, from the same forward as the
losses after it (with dropout, the same masks), rather than the step's own loss. Non-finite scores
count as ``-inf``; ties go to the first candidate. Losses are assumed positive (they are floored at the
dtype's smallest normal number before dividing).

C enters only through the candidates (each is 1/C times its sum-type gradient). When all task gradients are
equal to ``g``, every candidate is a positive multiple of ``g`` (subsets ``|S|/C g``; UMTG and PCGrad
``K/C g``; UW ``sum_k w_k / C g``), so IT-MTL returns a positive multiple of the UMTG direction. It is exactly the
UMTG (scale 1/C) when the UMTG is chosen: with an SGD update and the first-order score (linear in the step
length), whenever no candidate is a larger multiple (UW with ``sum_k w_k > K`` would be) and the UMTG comes
before PCGrad (ties go to the first); with the exact score also for a small enough step.

Cost per step: the Jacobian (K backward passes), the candidates (PCGrad: O(K^2 P)), one simulated optimizer
update per candidate and, for ``"exact"``, one forward pass of the model on the step's batch per candidate.
Needs: ``"jacobian"`` and ``"lookahead"``.

Diagnostics: ``chosen_candidate`` (index into the resolved list), ``chosen_score`` (its total transference),
``score_<i>`` for every candidate i (run-level records; ``ITMTL.candidate_labels`` names them) and, when a UW
candidate is used, ``uw_weight/<task>`` (the weights ``exp(-s_k)``, before 1/C).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast, get_args

import torch
from pydantic import ConfigDict, Field
from torch import Tensor
from typing_extensions import TypedDict

from mtlscope.methods import pcgrad
from mtlscope.methods.base import Combination, Lookahead, Method, StepInput, check_jacobian
from mtlscope.methods.registry import METHODS
from mtlscope.methods.uncertainty import UncertaintyWeighting
from mtlscope.options import FiniteFloat, PositiveFloat

#: Keywords of the ``candidates`` option (anything else names tasks).
KEYWORDS: tuple[str, ...] = ("singles", "pairs", "subsets", "all", "umtg", "pcgrad", "uw", "uw_pcgrad")
#: Candidate mechanisms that need the uncertainty weights.
UW_KINDS: frozenset[str] = frozenset({"uw", "uw_pcgrad"})
Approximation = Literal["exact", "first_order"]
APPROXIMATIONS: tuple[str, ...] = get_args(Approximation)
DEFAULT_CANDIDATES: tuple[str, ...] = ("singles", "umtg")
#: Options of the uncertainty weighting behind the "uw"/"uw_pcgrad" candidates (see ``uncertainty``).
UW_OPTIONS: tuple[str, ...] = ("lr", "init_log_variance")

CandidateSpec = str | Sequence[str]
#: The declared type of the ``candidates`` option: a spec, or a non-empty list of specs (names are checked later).
CandidateOption = str | Annotated[Sequence[str | Annotated[Sequence[str], Field(min_length=1)]], Field(min_length=1)]


class UWOptions(TypedDict, total=False):
    """The ``uw_options`` of it_mtl: the options of ``uw`` (``mtlscope.methods.uncertainty``)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    lr: PositiveFloat
    init_log_variance: FiniteFloat


@dataclass(frozen=True)
class Candidate:
    """One resolved candidate: a mechanism (``kind``) and, for ``"subset"``, the task positions it sums.

    ``kind`` is one of ``"subset"``, ``"pcgrad"``, ``"uw"``, ``"uw_pcgrad"``; ``label`` names it in diagnostics.
    """

    kind: str
    tasks: tuple[int, ...]
    label: str

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        """What makes two candidates the same gradient (the label does not)."""
        return (self.kind, self.tasks)


def check_candidate_specs(candidates: CandidateSpec | Sequence[CandidateSpec]) -> tuple[CandidateSpec, ...]:
    """Validate the shape of the ``candidates`` option (task names are checked by ``resolve_candidates``)."""
    if isinstance(candidates, str):
        candidates = (candidates,)
    if not isinstance(candidates, Sequence) or len(candidates) == 0:
        raise ValueError(
            f"it_mtl: option 'candidates' must be a non-empty list of candidate specs "
            f"({', '.join(KEYWORDS)}, a task name, or a list of task names), got {candidates!r}"
        )
    specs: list[CandidateSpec] = []
    for spec in candidates:
        if isinstance(spec, str):
            specs.append(spec)
            continue
        if (
            isinstance(spec, Sequence)
            and len(spec) > 0
            and all(isinstance(name, str) for name in spec)
            and not isinstance(spec, bytes)
        ):
            specs.append(tuple(spec))
            continue
        raise ValueError(
            f"it_mtl: each entry of option 'candidates' must be a keyword ({', '.join(KEYWORDS)}), a task name "
            f"or a non-empty list of task names, got {spec!r}"
        )
    return tuple(specs)


def resolve_candidates(
    candidates: CandidateSpec | Sequence[CandidateSpec], task_names: Sequence[str]
) -> tuple[Candidate, ...]:
    """Expand candidate specs into the ordered candidate list for ``task_names`` (see the module docstring).

    Raises ``ValueError`` for an unknown keyword or task name, an empty subset or an empty result.
    """
    names = tuple(task_names)
    if not names:
        raise ValueError("it_mtl: no tasks to build candidates for")
    position = {name: k for k, name in enumerate(names)}
    everything = tuple(range(len(names)))

    def subset(tasks: Sequence[int], label: str | None = None) -> Candidate:
        ordered = tuple(sorted(set(tasks)))
        return Candidate("subset", ordered, label or "+".join(names[k] for k in ordered))

    def task_positions(spec: Sequence[str]) -> list[int]:
        unknown = [name for name in spec if name not in position]
        if unknown:
            raise ValueError(
                f"it_mtl: option 'candidates' names task {unknown[0]!r}, which is not in this run; "
                f"tasks: {', '.join(names)}; keywords: {', '.join(KEYWORDS)}"
            )
        return [position[name] for name in spec]

    resolved: list[Candidate] = []
    for spec in check_candidate_specs(candidates):
        if isinstance(spec, str):
            if spec == "singles":
                resolved.extend(subset([k]) for k in everything)
            elif spec == "pairs":
                resolved.extend(subset(pair) for pair in itertools.combinations(everything, 2))
            elif spec == "subsets":
                for size in range(1, len(names) + 1):
                    resolved.extend(subset(group) for group in itertools.combinations(everything, size))
            elif spec in ("all", "umtg"):
                resolved.append(subset(everything, spec))
            elif spec in ("pcgrad", "uw", "uw_pcgrad"):
                resolved.append(Candidate(spec, everything, spec))
            elif spec in position:
                resolved.append(subset([position[spec]]))
            else:
                raise ValueError(
                    f"it_mtl: unknown candidate {spec!r} in option 'candidates'; expected one of "
                    f"{', '.join(KEYWORDS)}, a task name ({', '.join(names)}) or a list of task names"
                )
        else:
            resolved.append(subset(task_positions(spec)))
    unique: dict[tuple[str, tuple[int, ...]], Candidate] = {}
    for candidate in resolved:
        unique.setdefault(candidate.key, candidate)
    return tuple(unique.values())


def candidate_gradients(
    jacobian: Tensor,
    candidates: Sequence[Candidate],
    *,
    loss_scale: float = 1.0,
    generator: torch.Generator | None = None,
    uw_weights: Tensor | None = None,
) -> Tensor:
    """[N, P] the candidates' shared gradients for a [K, P] Jacobian, each scaled by 1/C.

    ``generator`` drives PCGrad's random order; ``uw_weights`` ([K]) are required by ``"uw"``/``"uw_pcgrad"``.
    """
    check_jacobian(jacobian)
    if not candidates:
        raise ValueError("it_mtl: at least one candidate is needed")
    weighted: Tensor | None = None
    if any(candidate.kind in UW_KINDS for candidate in candidates):
        if uw_weights is None:
            raise ValueError("it_mtl: candidates 'uw'/'uw_pcgrad' need uncertainty weights (uw_weights)")
        w = uw_weights.to(jacobian)
        if w.shape != (jacobian.shape[0],):
            raise ValueError(f"it_mtl: expected {jacobian.shape[0]} uncertainty weights, got shape {tuple(w.shape)}")
        weighted = w[:, None] * jacobian
    # All subsets in one product: a 0/1 selection matrix [S, K] (built on the CPU, one small transfer).
    subsets = [candidate for candidate in candidates if candidate.kind == "subset"]
    selection = torch.zeros(len(subsets), jacobian.shape[0], dtype=jacobian.dtype)
    for row, candidate in enumerate(subsets):
        selection[row, list(candidate.tasks)] = 1
    subset_gradients = iter((selection.to(jacobian.device) @ jacobian / loss_scale).unbind(0)) if subsets else iter(())
    rows = []
    for candidate in candidates:
        if candidate.kind == "subset":
            rows.append(next(subset_gradients))
        elif candidate.kind == "pcgrad":
            rows.append(pcgrad.aggregate(jacobian, generator=generator, loss_scale=loss_scale))
        elif candidate.kind == "uw":
            assert weighted is not None
            rows.append(weighted.sum(dim=0) / loss_scale)
        elif candidate.kind == "uw_pcgrad":
            assert weighted is not None
            rows.append(pcgrad.aggregate(weighted, generator=generator, loss_scale=loss_scale))
        else:
            raise ValueError(f"it_mtl: unknown candidate kind {candidate.kind!r}")
    return torch.stack([row.to(jacobian) for row in rows])


def total_transference(losses_before: Tensor, losses_after: Tensor) -> Tensor:
    """Total transference (Fifty et al., eq. 2): ``sum_j (1 - after_j / before_j)`` over the last dimension.

    ``losses_after`` may be [K] or [N, K] (one row per candidate); losses are floored at the smallest normal
    number of their dtype before dividing.
    """
    before = losses_before.clamp_min(torch.finfo(losses_before.dtype).tiny)
    return (1 - losses_after.to(before) / before).sum(dim=-1)


def first_order_transference(jacobian: Tensor, losses: Tensor, deltas: Tensor) -> Tensor:
    """[N] first-order total transference of updates ``deltas`` [N, P] (Fifty et al., §4.1):
    ``-sum_j <grad L_j, Delta> / L_j = -<J^T (1 / L), Delta>``."""
    check_jacobian(jacobian)
    before = losses.to(jacobian).clamp_min(torch.finfo(jacobian.dtype).tiny)
    log_product_gradient = (1 / before) @ jacobian
    return -(deltas.to(jacobian) @ log_product_gradient)


def transference_scores(
    gradients: Tensor,
    losses: Tensor,
    *,
    approximation: str = "exact",
    lookahead: Lookahead | None = None,
    jacobian: Tensor | None = None,
) -> Tensor:
    """[N] total transference of each candidate gradient (rows of ``gradients`` [N, P]).

    ``"exact"`` evaluates ``lookahead.losses(lookahead.update(g))`` for each candidate against the baseline
    ``lookahead.losses(0)`` (one forward more, so "before" and "after" come from the same forward).
    ``"first_order"`` needs the [K, P] ``jacobian``; the update is ``lookahead.update(g)``, or ``-g`` (SGD with
    unit learning rate: the paper's ``<sum_j g_j / L_j, g_phi>``) when ``lookahead`` is None.
    """
    if approximation not in APPROXIMATIONS:
        raise ValueError(
            f"it_mtl: option 'approximation' must be one of {', '.join(APPROXIMATIONS)}, got {approximation!r}"
        )
    if approximation == "exact":
        if lookahead is None:
            raise ValueError("it_mtl: approximation 'exact' needs a lookahead")
        after = torch.stack([lookahead.losses(lookahead.update(gradient)) for gradient in gradients])
        # the baseline comes from the same forward as the lookahead losses (same dropout masks, same graph)
        before = lookahead.losses(torch.zeros_like(gradients[0]))
        return total_transference(before, after)
    if jacobian is None:
        raise ValueError("it_mtl: approximation 'first_order' needs the jacobian")
    if lookahead is None:  # SGD with unit learning rate
        return first_order_transference(jacobian, losses, -gradients)
    deltas = torch.stack([lookahead.update(gradient) for gradient in gradients])
    return first_order_transference(jacobian, losses, deltas)


def choose(scores: Tensor) -> int:
    """Index of the highest score; non-finite scores count as ``-inf``, ties go to the first."""
    finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -torch.inf))
    best = finite.max()
    return int(torch.nonzero(finite == best)[0, 0].item()) if bool(torch.isfinite(best)) else 0


def aggregate(
    jacobian: Tensor,
    losses: Tensor,
    candidates: CandidateSpec | Sequence[CandidateSpec] = DEFAULT_CANDIDATES,
    *,
    task_names: Sequence[str] | None = None,
    loss_scale: float = 1.0,
    approximation: str = "first_order",
    lookahead: Lookahead | None = None,
    generator: torch.Generator | None = None,
    uw_weights: Tensor | None = None,
) -> Tensor:
    """IT-MTL's shared gradient for one step: the candidate with the highest total transference.

    ``task_names`` default to ``task0, task1, ...``. Without a ``lookahead`` only ``"first_order"`` is possible,
    with the SGD update ``-g`` (the argmax does not depend on the learning rate then).
    """
    num_tasks = check_jacobian(jacobian).shape[0]
    names = tuple(task_names) if task_names is not None else tuple(f"task{k}" for k in range(num_tasks))
    if len(names) != num_tasks:
        raise ValueError(f"it_mtl: {len(names)} task names for a jacobian of {num_tasks} tasks")
    resolved = resolve_candidates(candidates, names)
    gradients = candidate_gradients(
        jacobian, resolved, loss_scale=loss_scale, generator=generator, uw_weights=uw_weights
    )
    scores = transference_scores(gradients, losses, approximation=approximation, lookahead=lookahead, jacobian=jacobian)
    return gradients[choose(scores)]


class ITMTL(Method):
    name = "it_mtl"
    needs = frozenset({"jacobian", "lookahead"})

    def __init__(
        self,
        candidates: CandidateSpec | Sequence[CandidateSpec] = DEFAULT_CANDIDATES,
        approximation: str = "exact",
        uw_options: Mapping[str, float] | None = None,
    ) -> None:
        if approximation not in APPROXIMATIONS:
            raise ValueError(
                f"it_mtl: option 'approximation' must be one of {', '.join(APPROXIMATIONS)}, got {approximation!r}"
            )
        self.specs = check_candidate_specs(candidates)
        self.approximation = approximation
        if uw_options is not None and not isinstance(uw_options, Mapping):
            raise ValueError(
                f"it_mtl: option 'uw_options' must be a mapping (keys {', '.join(UW_OPTIONS)}), got {uw_options!r}"
            )
        self.uw_options = dict(uw_options or {})
        unknown = sorted(set(self.uw_options) - set(UW_OPTIONS))
        if unknown:
            raise ValueError(f"it_mtl: option 'uw_options' has no key {unknown[0]!r}; keys: {', '.join(UW_OPTIONS)}")
        UncertaintyWeighting(**self.uw_options)  # validates the values now (a config error, not a step error)
        self.candidates: tuple[Candidate, ...] = ()
        self.uw: UncertaintyWeighting | None = None

    @property
    def candidate_labels(self) -> tuple[str, ...]:
        """Labels of the resolved candidates, in the order of ``chosen_candidate``."""
        return tuple(candidate.label for candidate in self.candidates)

    def setup(self, task_names: tuple[str, ...]) -> None:
        super().setup(task_names)
        self.candidates = resolve_candidates(self.specs, self.task_names)
        self.uw = None
        if any(candidate.kind in UW_KINDS for candidate in self.candidates):
            self.uw = UncertaintyWeighting(**self.uw_options)
            self.uw.setup(self.task_names)

    def combine(self, step: StepInput) -> Combination:
        if not self.candidates:
            raise RuntimeError("it_mtl: call setup(task_names) before combine")
        if step.jacobian is None:
            raise ValueError("it_mtl needs the jacobian (the engine did not supply it)")
        if step.lookahead is None:
            raise ValueError("it_mtl needs a lookahead (the engine did not supply it)")
        jacobian = step.jacobian
        uw_weights = None
        if self.uw is not None:
            uw_weights = self.uw.current_weights().to(jacobian)
        gradients = candidate_gradients(
            jacobian,
            self.candidates,
            loss_scale=step.loss_scale,
            generator=step.generator,
            uw_weights=uw_weights,
        )
        scores = transference_scores(
            gradients, step.losses, approximation=self.approximation, lookahead=step.lookahead, jacobian=jacobian
        )
        chosen = choose(scores)
        if self.uw is not None:
            self.uw.update(step.losses)
        values = scores.detach().cpu().tolist()
        diagnostics = {"chosen_candidate": float(chosen), "chosen_score": float(values[chosen])}
        diagnostics.update({f"score_{index}": float(value) for index, value in enumerate(values)})
        if uw_weights is not None:
            diagnostics.update(
                {f"uw_weight/{task}": float(w) for task, w in zip(self.task_names, uw_weights.cpu().tolist())}
            )
        return Combination(shared_gradient=gradients[chosen], diagnostics=diagnostics)

    def state_dict(self) -> dict[str, Any]:
        return {"uw": self.uw.state_dict()} if self.uw is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = sorted(set(state) - {"uw"})
        if unknown:
            raise ValueError(f"it_mtl: unexpected state keys {unknown}")
        if self.uw is None:
            if "uw" in state:
                raise ValueError("it_mtl: state has uncertainty weights, but no candidate uses them")
            return
        if "uw" not in state:
            raise ValueError("it_mtl: state lacks the uncertainty weights ('uw') its candidates use")
        self.uw.load_state_dict(state["uw"])


@METHODS.register(
    "it_mtl",
    "increased-transfer MTL: the candidate gradient with the highest lookahead transference (Fifty et al. 2020, §4)",
)
def build(
    *,
    candidates: CandidateOption = DEFAULT_CANDIDATES,
    approximation: Approximation = "exact",
    uw_options: UWOptions | None = None,
) -> Method:
    return ITMTL(candidates, approximation, cast("Mapping[str, float] | None", uw_options))
