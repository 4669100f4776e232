"""The Gramian path: the K x K Gramian accumulated module by module equals J Jᵀ, and training on it gives the
Jacobian path's update (float64), without ever forming a K x P tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mtlscope import methods, settings
from mtlscope.engine.backward import MultiTaskBackward
from mtlscope.engine.gradients import jacobian_loop
from mtlscope.engine.gramian import GramianEngine, resolve_gradient_path
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.step import TrainingStep
from mtlscope.models import build_model
from mtlscope.runs.config import ConfigError, resolve, validate_config
from mtlscope.runs.launch import prepare

GRAMIAN_METHODS = [
    ("mgda", {}),
    ("mgda", {"normalization": "loss+"}),
    ("imtl_g", {}),
    ("imtl", {"lr": 0.1}),
    ("aligned_mtl", {}),
    ("cagrad", {}),
    ("nash_mtl", {}),
    ("pcgrad", {}),
    ("gradvac", {"beta": 0.5}),
]


class Scale(nn.Module):
    """A module with a parameter of its own and no closed form: x * exp(s) + tanh(s)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(-0.5, 0.5, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s.exp() + torch.tanh(self.s)


class Reused(nn.Module):
    """The same Linear applied twice (a module with several forward calls: the cross terms count)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.outer = nn.Sequential(nn.Linear(5, 6), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.outer(x)
        return self.inner(torch.tanh(self.inner(h)))


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh())
    cnn = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(inplace=True),
        nn.Conv2d(3, 2, 3, stride=2),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 6),
    )
    other = nn.Sequential(nn.Linear(5, 6), Scale(6), nn.LayerNorm(6), nn.GELU())
    x = torch.randn(8, 5, dtype=torch.float64)
    return {
        "mlp": (mlp.double().train(), x),
        "cnn": (cnn.double().train(), torch.randn(8, 2, 7, 7, dtype=torch.float64)),
        "no_closed_form": (other.double(), x),
        "reused": (Reused().double(), x),
    }


def _task_losses(features: torch.Tensor, heads: nn.ModuleList) -> torch.Tensor:
    return torch.stack([(head(features) ** 2).mean() + head(features).mean() for head in heads])


@pytest.mark.parametrize("name", ["mlp", "cnn", "no_closed_form", "reused"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_gramian_equals_jacobian_gramian(name: str, chunk: int | None) -> None:
    encoder, x = _models()[name]
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(5)]).double()
    shared = list(encoder.parameters())
    engine = GramianEngine([encoder], shared)
    losses = _task_losses(encoder(x), heads)
    jacobian = jacobian_loop(losses, shared)
    # from the losses directly, and in two stages from the gradients at the features
    gramian = engine.gramian(losses, torch.eye(5, dtype=torch.float64), chunk)
    assert torch.allclose(gramian, jacobian @ jacobian.T, rtol=0, atol=1e-10)
    features = encoder(x)
    losses = _task_losses(features, heads)
    at_features = torch.stack([torch.autograd.grad(loss, features, retain_graph=True)[0] for loss in losses])
    gramian = engine.gramian(features, at_features, chunk)
    assert torch.allclose(gramian, jacobian @ jacobian.T, rtol=0, atol=1e-10)
    assert gramian.abs().max() > 1e-3  # not trivially zero


def test_shared_parameters_outside_the_hooked_modules_are_refused() -> None:
    encoder = nn.Linear(3, 3).double()
    extra = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="exactly the trainable parameters"):
        GramianEngine([encoder], [*encoder.parameters(), extra])


def _setup(layout: str, num_tasks: int, seed: int = 0):
    setting = settings.get("synthetic", num_tasks=num_tasks, layout=layout, train_size=64)
    model = build_model(setting, {"name": "mlp", "hidden": [16, 8]}, {"name": "linear"}, seed).double()
    return setting, model


def _train(layout: str, method: str, options: dict, path: str, steps: int = 4, **step_options):
    setting, model = _setup(layout, 4)
    method_object = methods.get(method, **options)
    method_object.setup(setting.task_names)
    optimizer = build_optimizer(model.parameters(), "sgd", 0.1)
    generator = torch.Generator().manual_seed(3)
    step = TrainingStep(model, setting, method_object, optimizer, 2.0, generator, gradient_path=path, **step_options)
    assert step.engine.gramian_path == (path == "gramian")
    sampler = BatchSampler(setting, 8, seed=0)
    records = []
    for index in range(steps):
        batch = sampler.next()
        batch = type(batch)(batch.inputs.double(), batch.targets, batch.rows)
        records.append(step(batch, index))
    return model, generator, records


@pytest.mark.parametrize("layout", ["shared-input", "multi-input"])
@pytest.mark.parametrize(("method", "options"), GRAMIAN_METHODS)
def test_gramian_path_trains_as_the_jacobian_path(layout: str, method: str, options: dict) -> None:
    by_jacobian, generator_j, records_j = _train(layout, method, options, "jacobian")
    by_gramian, generator_g, records_g = _train(layout, method, options, "gramian")
    for (name, expected), actual in zip(by_jacobian.named_parameters(), by_gramian.parameters()):
        assert torch.allclose(actual, expected, rtol=0, atol=1e-10), name
    # the same random draws (PCGrad's and GradVac's visiting orders), in the same order
    assert torch.equal(generator_j.get_state(), generator_g.get_state())
    for expected, actual in zip(records_j, records_g):
        assert torch.allclose(actual.losses, expected.losses, rtol=0, atol=1e-10)


def test_gramian_path_records_the_same_diagnostics() -> None:
    _, _, records_j = _train("shared-input", "pcgrad", {}, "jacobian", steps=2, diagnostics_every=1)
    _, _, records_g = _train("shared-input", "pcgrad", {}, "gramian", steps=2, diagnostics_every=1)
    for expected, actual in zip(records_j, records_g):
        assert set(expected.diagnostics) == set(actual.diagnostics)
        for key, value in expected.diagnostics.items():
            assert actual.diagnostics[key] == pytest.approx(value, abs=1e-9), key


def test_auto_takes_the_gramian_path_above_the_budget() -> None:
    setting, model = _setup("shared-input", 4)
    method = methods.get("mgda")
    parameters = sum(p.numel() for p in model.shared_parameters())
    assert resolve_gradient_path("auto", method, 4, parameters, 8) == "jacobian"
    assert resolve_gradient_path("auto", method, 4, parameters, 8, budget_mb=4 * parameters * 8 / 2**20) == "jacobian"
    assert resolve_gradient_path("auto", method, 4, parameters, 8, budget_mb=4 * parameters * 7 / 2**20) == "gramian"
    assert resolve_gradient_path("auto", methods.get("graddrop"), 4, 10**9, 8) == "jacobian"
    assert resolve_gradient_path("gramian", methods.get("umtg"), 4, parameters, 8) == "jacobian"  # nothing to compute
    generator = torch.Generator()
    optimizer = build_optimizer(model.parameters(), "sgd", 0.1)
    method.setup(setting.task_names)
    step = TrainingStep(model, setting, method, optimizer, 1.0, generator, jacobian_budget_mb=1e-3)
    assert step.engine.gramian_path


@pytest.mark.parametrize(
    ("path", "method", "mode", "budget", "message"),
    [
        (
            "sideways",
            "mgda",
            "auto",
            1.0,
            "training.gradient_path must be one of auto, jacobian, gramian, got 'sideways'",
        ),
        ("gramian", "graddrop", "auto", 1.0, "method 'graddrop' needs the task gradients themselves"),
        ("gramian", "mgda", "loop", 1.0, "cannot be combined with training.jacobian_mode 'loop'"),
        ("auto", "mgda", "auto", 0.0, "training.jacobian_budget_mb must be a number > 0, got 0.0"),
    ],
)
def test_bad_gradient_path_options_are_one_line_errors(
    path: str, method: str, mode: str, budget: float, message: str
) -> None:
    with pytest.raises(ValueError) as error:
        resolve_gradient_path(path, methods.get(method), 4, 100, 4, budget, mode)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("training", "method", "message"),
    [
        ({"gradient_path": "sideways"}, "mgda", "training.gradient_path"),
        ({"jacobian_budget_mb": -1}, "mgda", "training.jacobian_budget_mb"),
        ({"gradient_path": "gramian"}, "graddrop", "method 'graddrop' needs the task gradients themselves"),
        ({"gradient_path": "gramian", "jacobian_mode": "loop"}, "pcgrad", "training.jacobian_mode 'loop'"),
    ],
)
def test_config_errors_are_one_line(training: dict, method: str, message: str) -> None:
    data = {"setting": {"name": "synthetic", "options": {"num_tasks": 2}}, "method": {"name": method}}
    data["training"] = {"steps": 1, **training}
    with pytest.raises(ConfigError) as error:
        prepare(resolve(validate_config(data)))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_default_options_keep_run_ids() -> None:
    data = {"setting": {"name": "synthetic", "options": {"num_tasks": 2}}, "training": {"steps": 1}}
    plain = validate_config(data)
    assert "gradient_path" not in plain.to_dict()["training"]
    assert "jacobian_budget_mb" not in plain.to_dict()["training"]
    forced = validate_config({**data, "training": {"steps": 1, "gradient_path": "gramian"}})
    assert forced.run_id() != plain.run_id()


def test_the_trainer_taps_only_its_own_forward() -> None:
    # a forward with gradients between steps (a probe's) must not be taken for a call of the step's graph
    setting, model = _setup("shared-input", 3)
    method = methods.get("mgda")
    method.setup(setting.task_names)
    optimizer = build_optimizer(model.parameters(), "sgd", 0.1)
    step = TrainingStep(model, setting, method, optimizer, 1.0, torch.Generator(), gradient_path="gramian")
    sampler = BatchSampler(setting, 8, seed=0)
    for index in range(2):
        batch = sampler.next()
        batch = type(batch)(batch.inputs.double(), batch.targets, batch.rows)
        model.encoder(batch.inputs).sum().backward()  # an outside forward and backward
        optimizer.zero_grad()
        assert step(batch, index).finite


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple | list) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize(("path", "forms_jacobian"), [("gramian", False), ("jacobian", True)])
def test_the_gramian_path_never_forms_a_k_by_p_tensor(path: str, forms_jacobian: bool) -> None:
    # wide layers and a batch of 2: K x P is far larger than any activation or single module's block
    setting = settings.get("synthetic", num_tasks=6, layout="shared-input", dim=64, train_size=16)
    model = build_model(setting, {"name": "mlp", "hidden": [64, 64, 64]}, {"name": "linear"}, 0)
    num_tasks = len(setting.task_names)
    shared = sum(p.numel() for p in model.shared_parameters())
    method = methods.get("mgda")
    method.setup(setting.task_names)
    optimizer = build_optimizer(model.parameters(), "sgd", 0.1)
    step = TrainingStep(model, setting, method, optimizer, 1.0, torch.Generator(), gradient_path=path)
    batch = BatchSampler(setting, 2, seed=0).next()
    with _LargestTensor() as watch:
        step(batch, 0)
    assert (watch.largest >= num_tasks * shared) == forms_jacobian
    if not forms_jacobian:
        largest_module = max(p.numel() for p in model.encoder.parameters()) + 64
        assert watch.largest <= num_tasks * largest_module


@pytest.mark.parametrize("with_features", [True, False])
def test_multitask_backward_on_the_gramian_path_fills_grad_as_the_jacobian_path(with_features: bool) -> None:
    grads = []
    for path in ("jacobian", "gramian"):
        torch.manual_seed(0)
        encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6)).double()
        heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(3)]).double()
        mtl = MultiTaskBackward("pcgrad", shared=encoder, tasks=heads, loss_scale=3, seed=1, gradient_path=path)
        for _ in range(2):
            encoder.zero_grad()
            heads.zero_grad()
            x = torch.randn(4, 5, dtype=torch.float64)
            z = encoder(x)
            mtl(_task_losses(z, heads), features=z if with_features else None)
        grads.append([p.grad.clone() for p in [*encoder.parameters(), *heads.parameters()]])
    for expected, actual in zip(*grads):
        assert torch.allclose(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_features", [False, True])
def test_the_weighted_backward_frees_the_graph_as_loss_backward_does(with_features: bool) -> None:
    # the encoder's saved activations must not outlive the step's backward (they would stay through the
    # optimizer step: on a ResNet-18 at B = 8, as much memory as the whole hand-written step's activations)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6)).double()
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(3)]).double()
    mtl = MultiTaskBackward("mgda", shared=encoder, tasks=heads, gradient_path="gramian")
    z = encoder(torch.randn(4, 5, dtype=torch.float64))
    losses = _task_losses(z, heads)
    mtl(losses, features=z if with_features else None)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(z.sum(), list(encoder.parameters()))  # the encoder's part alone
    assert all(p.grad is not None for p in [*encoder.parameters(), *heads.parameters()])


def test_multitask_backward_gramian_path_needs_a_module_and_a_capable_method() -> None:
    encoder = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="give shared= as a module"):
        MultiTaskBackward("mgda", shared=list(encoder.parameters()), gradient_path="gramian")
    with pytest.raises(ValueError, match="needs the task gradients themselves"):
        MultiTaskBackward("graddrop", shared=encoder, gradient_path="gramian")


def _batchnorm_setting(layout: str, num_tasks: int):
    """Multi-task images through a tiny ResNet (BatchNorm layers: the examples of a batch are coupled)."""
    generator = torch.Generator().manual_seed(0)

    shared = [torch.randn(16, 3, 8, 8, generator=generator) for _ in range(3)]

    def split(index: int) -> settings.Split:
        inputs = shared[index] if layout == "shared-input" else torch.randn(16, 3, 8, 8, generator=generator)
        return settings.Split(inputs, torch.randint(0, 3, (16,), generator=generator))

    tasks = tuple(
        settings.Task(f"t{k}", 3, split(0), split(1), split(2), loss="cross_entropy") for k in range(num_tasks)
    )
    encoder = {"name": "resnet", "blocks": [1], "widths": [4]}
    return settings.Setting("bn", tasks, layout, (3, 8, 8), {"encoder": encoder, "head": {"name": "linear"}})


def _bn_step(path: str, budget_mb: float = 1024.0):
    setting = _batchnorm_setting("multi-input", 3)
    model = build_model(setting, dict(setting.default_model["encoder"]), {"name": "linear"}, 0).double()
    method = methods.get("mgda")
    method.setup(setting.task_names)
    optimizer = build_optimizer(model.parameters(), "sgd", 0.1)
    step = TrainingStep(
        model, setting, method, optimizer, 1.0, torch.Generator(), gradient_path=path, jacobian_budget_mb=budget_mb
    )
    batch = BatchSampler(setting, 4, seed=0).next()
    step(type(batch)(batch.inputs.double(), batch.targets, batch.rows), 0)
    return step, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_auto_never_changes_the_update_of_a_multi_input_batchnorm_model() -> None:
    # per-task graphs (BatchNorm statistics per task) and one concatenated graph are different updates here
    _, on_jacobian = _bn_step("jacobian")
    _, on_gramian = _bn_step("gramian")
    assert not torch.allclose(on_jacobian, on_gramian, atol=1e-6)
    # over the budget, auto keeps the per-task update instead of switching to the Gramian path
    step, on_auto = _bn_step("auto", budget_mb=1e-6)
    assert not step.engine.gramian_path
    torch.testing.assert_close(on_auto, on_jacobian, rtol=0, atol=1e-12)


def test_auto_takes_the_gramian_path_where_it_is_the_same_update() -> None:
    setting, model = _setup("multi-input", 4)  # an MLP: no batch statistics, per-task and one graph agree
    method = methods.get("mgda")
    method.setup(setting.task_names)
    optimizer = build_optimizer(model.parameters(), "sgd", 0.1)
    step = TrainingStep(model, setting, method, optimizer, 1.0, torch.Generator(), jacobian_budget_mb=1e-6)
    assert step.engine.gramian_path
    setting = _batchnorm_setting("shared-input", 3)  # shared input: the Jacobian path is one graph too
    model = build_model(setting, dict(setting.default_model["encoder"]), {"name": "linear"}, 0)
    method = methods.get("mgda")
    method.setup(setting.task_names)
    optimizer = build_optimizer(model.parameters(), "sgd", 0.1)
    step = TrainingStep(model, setting, method, optimizer, 1.0, torch.Generator(), jacobian_budget_mb=1e-6)
    assert step.engine.gramian_path
    assert resolve_gradient_path("auto", method, 4, 100, 8, 1e-6, per_task_differs=True) == "jacobian"
    assert resolve_gradient_path("gramian", method, 4, 100, 8, 1e-6, per_task_differs=True) == "gramian"
