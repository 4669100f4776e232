"""``MultiTaskBackward`` / ``mtlscope.backward``: a hand-written training loop gives the trainer's parameters for
every method, and TorchJD's gradients for the aggregators TorchJD has."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlscope
from mtlscope import methods, settings
from mtlscope.engine.optimizers import build_optimizer
from mtlscope.engine.sampling import BatchSampler
from mtlscope.engine.trainer import ListSink, Schedule, Trainer
from mtlscope.models import build_model
from mtlscope.models.multitask import MultiTaskModel
from mtlscope.settings.setting import Setting

STEPS, STEPS_PER_EPOCH, BATCH, SEED, LOSS_SCALE = 8, 2, 16, 3, 2.0


def _setting(layout: str) -> Setting:
    return settings.get("synthetic", num_tasks=3, layout=layout, dim=8, train_size=64, val_size=16, test_size=16)


def _model(setting: Setting) -> MultiTaskModel:
    return build_model(setting, {"name": "mlp", "hidden": [16, 8]}, {"name": "linear"}, SEED)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(model.parameters(), "sgd", 0.05, momentum=0.9)


def _trainer_parameters(setting: Setting, method: str, options: dict[str, Any]) -> dict[str, Tensor]:
    model = _model(setting)
    outcome = Trainer(
        setting,
        model,
        methods.get(method, **options),
        _optimizer(model),
        schedule=Schedule(STEPS, STEPS_PER_EPOCH, STEPS),
        batch_size=BATCH,
        loss_scale=LOSS_SCALE,
        seed=SEED,
        sink=ListSink(),
    ).run()
    assert outcome.status == "completed", outcome.message
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _loop_parameters(setting: Setting, method: str, options: dict[str, Any]) -> dict[str, Tensor]:
    """A researcher's loop: their encoder and heads, their optimizer, the trainer's batches."""
    model = _model(setting)
    encoder, heads = model.encoder, model.heads
    optimizer = _optimizer(model)
    names = setting.task_names
    mtl = mtlscope.MultiTaskBackward(
        method,
        shared=encoder,
        tasks={name: heads[name] for name in names},
        loss_scale=LOSS_SCALE,
        optimizer=optimizer,
        steps_per_epoch=STEPS_PER_EPOCH,
        seed=SEED,
        **options,
    )
    sampler = BatchSampler(setting, BATCH, SEED)
    for _ in range(STEPS):
        batch = sampler.next()

        def task_losses(batch: Any = batch) -> tuple[dict[str, Tensor], Tensor]:
            z = encoder(batch.inputs)
            losses = {
                task.name: task.loss(heads[task.name](z[batch.rows[task.name]]), batch.targets[task.name])
                for task in setting.tasks
            }
            return losses, z

        optimizer.zero_grad()
        losses, z = task_losses()
        mtl(losses, features=z, closure=lambda: task_losses()[0])
        optimizer.step()
        mtl.after_step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("layout", ["shared-input", "multi-input"])
@pytest.mark.parametrize("method", methods.available())
def test_own_loop_gives_the_trainers_parameters(method: str, layout: str) -> None:
    setting = _setting(layout)
    expected = _trainer_parameters(setting, method, {})
    got = _loop_parameters(setting, method, {})
    start = {name: p.detach() for name, p in _model(setting).named_parameters()}
    for name, value in expected.items():
        assert not torch.equal(value, start[name]), f"{name} did not move: the comparison would prove nothing"
        if layout == "shared-input":
            assert torch.equal(got[name], value), f"{method}: {name} differs from the trainer's"
        else:
            # float32: the trainer runs each task's examples in their own graph when the method needs the Jacobian,
            # the loop takes them from one graph: equal up to the rounding of the different summation order
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=f"{method} {layout}: {name}")


def test_stateful_method_state_follows_the_trainer() -> None:
    # GradNorm's learned weights after the loop are the trainer's (the method object holds the state)
    setting = _setting("shared-input")
    model = _model(setting)
    method = methods.get("gradnorm")
    Trainer(
        setting,
        model,
        method,
        _optimizer(model),
        schedule=Schedule(STEPS, STEPS_PER_EPOCH, STEPS),
        batch_size=BATCH,
        loss_scale=LOSS_SCALE,
        seed=SEED,
        sink=ListSink(),
    ).run()
    mine = methods.get("gradnorm")
    loop_model = _model(setting)
    optimizer = _optimizer(loop_model)
    mtl = mtlscope.MultiTaskBackward(
        mine, loop_model.encoder, {n: loop_model.heads[n] for n in setting.task_names}, loss_scale=LOSS_SCALE
    )
    sampler = BatchSampler(setting, BATCH, SEED)
    for _ in range(STEPS):
        batch = sampler.next()
        optimizer.zero_grad()
        z = loop_model.encoder(batch.inputs)
        mtl([task.loss(loop_model.heads[task.name](z), batch.targets[task.name]) for task in setting.tasks], z)
        optimizer.step()
    torch.testing.assert_close(mine.weights.value, method.weights.value, rtol=1e-5, atol=1e-6)
    assert mtl.step == STEPS


def _toy(seed: int = 0) -> tuple[nn.Module, list[nn.Module], Tensor, list[Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    heads = [nn.Linear(4, 1).double() for _ in range(3)]
    for module in [encoder, *heads]:
        for p in module.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    x = torch.randn(10, 5, generator=generator, dtype=torch.float64)
    ys = [torch.randn(10, 1, generator=generator, dtype=torch.float64) for _ in heads]
    return encoder, heads, x, ys


def _grads(modules: list[nn.Module]) -> list[Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for m in modules for p in m.parameters()]


# our name and options, TorchJD's aggregator and options, the loss scale C that makes them the same update (TorchJD
# works at the scale of the mean for these: C = K = 3), and the tolerance of the pair's solvers (as in their own tests)
TORCHJD = [
    ("pcgrad", {}, "PCGrad", {}, 1.0, 1e-9),
    ("umtg", {}, "Sum", {}, 1.0, 1e-9),
    ("umtg", {}, "Mean", {}, 3.0, 1e-9),
    ("imtl_g", {}, "IMTLG", {}, 3.0, 1e-9),
    ("aligned_mtl", {}, "AlignedMTL", {}, 3.0, 1e-9),
    ("mgda", {}, "MGDA", {"epsilon": 1e-12, "max_iters": 20000}, 3.0, 1e-4),  # TorchJD's Frank-Wolfe
    ("cagrad", {"c": 0.4, "rescale": 0}, "CAGrad", {"c": 0.4}, 3.0, 5e-4),  # SLSQP vs Clarabel
    ("nash_mtl", {"max_norm": 0.0, "optim_niter": 200}, "NashMTL", {"n_tasks": 3, "max_norm": 0.0}, 1.0, 1e-4),
]


def _toy_losses(seed: int = 0) -> tuple[nn.Module, list[nn.Module], Tensor, list[Tensor]]:
    encoder, heads, x, ys = _toy(seed)
    z = encoder(x)
    return encoder, heads, z, [nn.functional.mse_loss(head(z), y) for head, y in zip(heads, ys)]


@pytest.mark.parametrize(("ours", "options", "theirs", "their_options", "scale", "tolerance"), TORCHJD)
def test_matches_torchjd_mtl_backward(
    ours: str, options: dict[str, Any], theirs: str, their_options: dict[str, Any], scale: float, tolerance: float
) -> None:
    pytest.importorskip("torchjd", reason="TorchJD not installed: agreement with TorchJD not checked")
    if theirs in ("CAGrad", "NashMTL"):
        pytest.importorskip("cvxpy", reason="cvxpy not installed: TorchJD's solver cannot run")
    import torchjd.aggregation as aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    encoder, heads, z, losses = _toy_losses()
    mtl_backward(losses, features=z, tasks_params=[list(h.parameters()) for h in heads])
    jac_to_grad(list(encoder.parameters()), getattr(aggregation, theirs)(**their_options))
    reference = _grads([encoder, *heads])

    encoder, heads, z, losses = _toy_losses()
    mtlscope.MultiTaskBackward(ours, encoder, heads, loss_scale=scale, **options)(losses, features=z)
    got = _grads([encoder, *heads])
    shared = len(list(encoder.parameters()))
    norm = float(torch.cat([g.flatten() for g in reference[:shared]]).norm())
    for mine, their in zip(got[:shared], reference[:shared]):
        torch.testing.assert_close(mine, their, rtol=0, atol=tolerance * norm)
    # each head gets its own task's gradient, as TorchJD gives it, times 1/C (or its loss weight)
    if scale == 1.0 and ours in ("pcgrad", "umtg", "nash_mtl"):
        for mine, their in zip(got[shared:], reference[shared:]):
            torch.testing.assert_close(mine, their, rtol=1e-9, atol=1e-12)


def test_matches_torchjd_backward_without_features() -> None:
    # no features: the Jacobian straight from the losses, as torchjd.autojac.backward computes it
    pytest.importorskip("torchjd", reason="TorchJD not installed: agreement with TorchJD not checked")
    from torchjd.aggregation import PCGrad
    from torchjd.autojac import backward, jac_to_grad

    encoder, heads, _, losses = _toy_losses()
    parameters = [p for m in [encoder, *heads] for p in m.parameters()]
    backward(losses, inputs=parameters)
    jac_to_grad(parameters, PCGrad())
    reference = _grads([encoder, *heads])
    encoder, heads, _, losses = _toy_losses()
    mtlscope.backward(losses, [p for m in [encoder, *heads] for p in m.parameters()], method="pcgrad")
    for mine, their in zip(_grads([encoder, *heads]), reference):
        torch.testing.assert_close(mine, their, rtol=1e-9, atol=1e-12)


def test_without_features_equals_with_features() -> None:
    # the Jacobian straight from the losses (no features given) is the two-stage one
    encoder, heads, x, ys = _toy()
    z = encoder(x)
    mtlscope.backward([nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)], encoder, z, method="pcgrad")
    with_features = _grads([encoder, *heads])
    encoder, heads, x, ys = _toy()
    z = encoder(x)
    mtlscope.backward([nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)], encoder, method="pcgrad")
    for a, b in zip(with_features, _grads([encoder, *heads])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_heads_found_when_not_given() -> None:
    encoder, heads, x, ys = _toy()
    z = encoder(x)
    losses = [nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)]
    mtlscope.backward(losses, encoder, z, method="pcgrad", tasks=heads)
    given = _grads([encoder, *heads])
    encoder, heads, x, ys = _toy()
    z = encoder(x)
    mtlscope.backward([nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)], encoder, z, method="pcgrad")
    found = _grads([encoder, *heads])
    for a, b in zip(given, found):
        assert torch.equal(a, b)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for h in heads for p in h.parameters())


def test_accumulates_like_loss_backward() -> None:
    encoder, heads, x, ys = _toy()
    for _ in range(2):
        z = encoder(x)
        mtlscope.backward([nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)], encoder, z, method="pcgrad")
    twice = _grads([encoder, *heads])
    encoder, heads, x, ys = _toy()
    z = encoder(x)
    mtlscope.backward([nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)], encoder, z, method="pcgrad")
    for a, b in zip(twice, _grads([encoder, *heads])):
        torch.testing.assert_close(a, 2 * b)


def test_lookahead_leaves_the_model_and_graph_intact() -> None:
    encoder, heads, x, ys = _toy()
    optimizer = torch.optim.SGD([p for m in [encoder, *heads] for p in m.parameters()], lr=0.1)
    before = [p.detach().clone() for p in encoder.parameters()]

    def losses() -> list[Tensor]:
        z = encoder(x)
        return [nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)]

    mtl = mtlscope.MultiTaskBackward("it_mtl", encoder, heads, optimizer=optimizer)
    combination = mtl(losses(), closure=losses)
    assert "chosen_candidate" in combination.diagnostics
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e, h, z, losses: mtlscope.backward(losses, e, z, method="gradnorm"), "keeps state across steps"),
        (lambda e, h, z, losses: mtlscope.backward(losses, e, method="mgda_ub"), "give features="),
        (lambda e, h, z, losses: mtlscope.MultiTaskBackward("it_mtl", e, h), "give optimizer="),
        (lambda e, h, z, losses: mtlscope.MultiTaskBackward("gradnorm", list(e.parameters()), h), "give last_shared="),
        (lambda e, h, z, losses: mtlscope.MultiTaskBackward("famo", e, h).after_step(), "losses after the step"),
        (lambda e, h, z, losses: mtlscope.backward(losses[:2], e, z, tasks=h), "3 groups of task parameters"),
        (lambda e, h, z, losses: mtlscope.backward(losses, e, [z], method="pcgrad"), "features must be one tensor"),
        (lambda e, h, z, losses: mtlscope.MultiTaskBackward("umtg", e, loss_scale="N"), "'K' or 'sqrt\\(K\\)'"),
        (lambda e, h, z, losses: mtlscope.backward(losses, e, method=methods.get("famo")), "across the optimizer"),
        (lambda e, h, z, losses: mtlscope.backward(losses, e, method=methods.get("umtg"), lr=1), "pass them to it"),
    ],
)
def test_bad_use_is_one_clear_error(call: Any, message: str) -> None:
    encoder, heads, x, ys = _toy()
    z = encoder(x)
    losses = [nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)]
    with pytest.raises((ValueError, TypeError), match=message):
        call(encoder, heads, z, losses)


def test_non_finite_loss_writes_nothing() -> None:
    encoder, heads, z, losses = _toy_losses()
    with pytest.raises(FloatingPointError, match="non-finite"):
        mtlscope.backward([*losses[:2], losses[2] * float("nan")], encoder, z, method="pcgrad", tasks=heads)
    assert all(p.grad is None for m in [encoder, *heads] for p in m.parameters())


def test_task_modules_by_name_and_dwa_epochs() -> None:
    # a ModuleDict names the tasks; DWA's weights change once two epochs are complete
    encoder, heads, x, ys = _toy()
    named = nn.ModuleDict({"a": heads[0], "b": heads[1], "c": heads[2]})
    mtl = mtlscope.MultiTaskBackward("dwa", encoder, named, steps_per_epoch=1)
    assert mtl.task_names == ("a", "b", "c")
    optimizer = torch.optim.SGD([*encoder.parameters(), *named.parameters()], lr=0.01)
    seen = []
    for _ in range(3):
        optimizer.zero_grad()
        z = encoder(x)
        combination = mtl({n: nn.functional.mse_loss(named[n](z), y) for n, y in zip("abc", ys)}, features=z)
        assert combination.loss_weights is not None
        seen.append(combination.loss_weights)
        optimizer.step()
    assert torch.equal(seen[0], torch.ones(3, dtype=seen[0].dtype))
    assert torch.equal(seen[1], seen[0])
    assert not torch.equal(seen[2], seen[0])  # epoch 2: the loss ratios of epochs 0 and 1


# -- a plain nn.Module encoder (not an mtlscope Encoder) in a hand-written loop --------------------------------


def _plain_loop_parameters(setting: Setting, method: str, explicit_last_shared: bool) -> dict[str, Tensor]:
    """The researcher's loop with their own nn.Sequential encoder (the same layers and initial weights as the
    trainer's MLP encoder): GradNorm's last shared layer is found by last_weight_layer, or given."""
    model = _model(setting)
    plain = nn.Sequential(*model.encoder.layers)  # a plain module: no last_shared_layer() to ask
    assert not isinstance(plain, mtlscope.models.encoders.Encoder)
    optimizer = _optimizer(model)
    names = setting.task_names
    last = {"last_shared": plain[-2]} if explicit_last_shared else {}  # the last Linear (before the activation)
    mtl = mtlscope.MultiTaskBackward(
        method,
        shared=plain,
        tasks={name: model.heads[name] for name in names},
        loss_scale=LOSS_SCALE,
        steps_per_epoch=STEPS_PER_EPOCH,
        seed=SEED,
        **last,
    )
    sampler = BatchSampler(setting, BATCH, SEED)
    for _ in range(STEPS):
        batch = sampler.next()
        optimizer.zero_grad()
        z = plain(batch.inputs)
        mtl([task.loss(model.heads[task.name](z), batch.targets[task.name]) for task in setting.tasks], features=z)
        optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("explicit_last_shared", [False, True])
@pytest.mark.parametrize("method", ["pcgrad", "gradnorm"])
def test_plain_module_loop_gives_the_trainers_parameters(method: str, explicit_last_shared: bool) -> None:
    setting = _setting("shared-input")
    expected = _trainer_parameters(setting, method, {})
    got = _plain_loop_parameters(setting, method, explicit_last_shared)
    start = {name: p.detach() for name, p in _model(setting).named_parameters()}
    for name, value in expected.items():
        assert not torch.equal(value, start[name]), f"{name} did not move: the comparison would prove nothing"
        assert torch.equal(got[name], value), f"{method}: {name} differs from the trainer's"


def test_gradnorm_last_shared_layer_changes_the_result() -> None:
    # the layer matters: GradNorm with the first Linear as W gives other parameters (so the tests above can fail)
    setting = _setting("shared-input")
    model = _model(setting)
    plain = nn.Sequential(*model.encoder.layers)
    optimizer = _optimizer(model)
    mtl = mtlscope.MultiTaskBackward(
        "gradnorm", plain, {n: model.heads[n] for n in setting.task_names}, loss_scale=LOSS_SCALE, last_shared=plain[1]
    )
    sampler = BatchSampler(setting, BATCH, SEED)
    for _ in range(STEPS):
        batch = sampler.next()
        optimizer.zero_grad()
        z = plain(batch.inputs)
        mtl([task.loss(model.heads[task.name](z), batch.targets[task.name]) for task in setting.tasks], features=z)
        optimizer.step()
    expected = _trainer_parameters(setting, "gradnorm", {})
    assert any(not torch.equal(p.detach(), expected[name]) for name, p in model.named_parameters())


# TorchJD's random aggregators draw from torch's global generator, ours from the given one: seeded alike, they agree
RANDOM_TORCHJD = [
    ("graddrop", {}, "GradDrop", {}, 1.0),
    ("rlw", {}, "Random", {}, 3.0),  # softmax(randn(K)) @ J: our weights with C = K
    ("gradvac", {"beta": 0.5}, "GradVac", {"beta": 0.5}, 1.0),  # stateful: EMA targets over the steps
]


@pytest.mark.parametrize(("ours", "options", "theirs", "their_options", "scale"), RANDOM_TORCHJD)
def test_random_aggregators_match_torchjd_over_steps(
    ours: str, options: dict[str, Any], theirs: str, their_options: dict[str, Any], scale: float
) -> None:
    pytest.importorskip("torchjd", reason="TorchJD not installed: agreement with TorchJD not checked")
    import torchjd.aggregation as aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    aggregator = getattr(aggregation, theirs)(**their_options)
    encoder, heads, x, ys = _toy()
    mine_encoder, mine_heads, _, _ = _toy()
    mtl = mtlscope.MultiTaskBackward(
        ours, mine_encoder, mine_heads, loss_scale=scale, generator=torch.Generator().manual_seed(7), **options
    )
    torch.manual_seed(7)
    updates = []
    for _ in range(4):
        # the same batch at new parameters each step (a plain SGD step of each side's own update)
        for enc, hs, run in ((encoder, heads, "theirs"), (mine_encoder, mine_heads, "ours")):
            for p in [*enc.parameters(), *(q for h in hs for q in h.parameters())]:
                p.grad = None
            z = enc(x)
            losses = [nn.functional.mse_loss(h(z), y) for h, y in zip(hs, ys)]
            if run == "theirs":
                mtl_backward(losses, features=z, tasks_params=[list(h.parameters()) for h in hs])
                jac_to_grad(list(enc.parameters()), aggregator)
            else:
                mtl(losses, features=z)
        shared_theirs = torch.cat([p.grad.flatten() for p in encoder.parameters()])
        shared_ours = torch.cat([p.grad.flatten() for p in mine_encoder.parameters()])
        torch.testing.assert_close(shared_ours, shared_theirs, rtol=1e-9, atol=1e-9 * float(shared_theirs.norm()))
        updates.append(shared_ours)
        with torch.no_grad():
            for p, q in zip(encoder.parameters(), mine_encoder.parameters()):
                p -= 0.01 * p.grad
                q -= 0.01 * q.grad
    assert not torch.equal(updates[0], updates[1])


def test_bad_loop_input_is_one_clear_error() -> None:
    encoder, heads, x, ys = _toy()
    z = encoder(x)
    losses = [nn.functional.mse_loss(h(z), y) for h, y in zip(heads, ys)]
    with pytest.raises(ValueError, match=r"unknown method 'pcgradd'; available: .*pcgrad"):
        mtlscope.MultiTaskBackward("pcgradd", encoder, heads)
    with pytest.raises(ValueError, match="unknown method 'pcgradd'"):
        mtlscope.backward(losses, encoder, z, method="pcgradd")
    with pytest.raises(ValueError, match="features have no autograd graph"):
        mtlscope.backward(losses, encoder, z.detach(), method="pcgrad")
    other = nn.Linear(5, 4).double()
    with pytest.raises(ValueError, match="features were not computed from the shared parameters"):
        mtlscope.backward(losses, encoder, other(x), method="pcgrad")
    with pytest.raises(ValueError, match="last_shared must be parameters of shared"):
        mtlscope.MultiTaskBackward("gradnorm", encoder, heads, last_shared=heads[0])
    with pytest.raises(ValueError, match="expected 3 task losses"):
        mtlscope.MultiTaskBackward("pcgrad", encoder, task_names=["a", "b", "c"])(losses[:2], features=z)
    assert all(p.grad is None for m in [encoder, *heads] for p in m.parameters())
