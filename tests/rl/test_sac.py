"""The soft actor-critic pieces against hand-computed values and independent paths."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtlscope.rl.replay import ReplayBuffer
from mtlscope.rl.sac import (
    MultiTaskSAC,
    SACOptions,
    TanhGaussianPolicy,
    actor_loss,
    critic_loss,
    soft_target,
    soft_update,
    temperature_loss,
)


def test_soft_target_by_hand() -> None:
    target = soft_target(
        reward=torch.tensor([1.0, 0.0]),
        terminated=torch.tensor([0.0, 1.0]),
        next_q1=torch.tensor([2.0, 3.0]),
        next_q2=torch.tensor([1.5, 4.0]),
        next_log_prob=torch.tensor([0.5, 0.2]),
        alpha=torch.tensor(0.1),
        gamma=0.9,
    )
    # 1 + 0.9 * (min(2, 1.5) - 0.1 * 0.5) = 2.305; a terminated transition keeps its reward only
    assert target.tolist() == pytest.approx([2.305, 0.0])


def test_critic_actor_and_temperature_losses_by_hand() -> None:
    loss = critic_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert float(loss) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    actor = actor_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), torch.tensor(0.5))
    assert float(actor) == pytest.approx((0.5 - 0.0 + 1.0 - 0.0) / 2)
    log_alpha = torch.tensor(0.3, requires_grad=True)
    temperature = temperature_loss(log_alpha, torch.tensor([1.0, 3.0], requires_grad=True), target_entropy=-4.0)
    assert float(temperature.detach()) == pytest.approx(-(0.3 * (-3.0 + -1.0) / 2))
    temperature.backward()
    assert float(log_alpha.grad) == pytest.approx(2.0)  # -mean(log pi + target entropy): alpha grows


def test_soft_update_by_hand() -> None:
    source, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    torch.nn.init.constant_(source.weight, 1.0)
    torch.nn.init.constant_(target.weight, 0.0)
    soft_update(target, source, 0.1)
    assert torch.allclose(target.weight, torch.full((1, 2), 0.1))


def test_tanh_gaussian_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(3, 2, [8])
    x = torch.randn(5, 3)
    action, log_prob = policy.sample(x, torch.Generator().manual_seed(1))
    mean, log_std = policy(x)
    distribution = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    expected = distribution.log_prob(action.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    assert torch.allclose(log_prob, expected, atol=1e-3)
    assert bool((action.abs() < 1).all())


def _batch(sac: MultiTaskSAC, generator: torch.Generator, rows: int = 4) -> list[dict[str, torch.Tensor]]:
    buffers = []
    for _ in sac.tasks:
        buffer = ReplayBuffer(16, sac.observation_size, sac.action_size)
        for _ in range(rows):
            buffer.add(
                torch.randn(sac.observation_size, generator=generator),
                torch.rand(sac.action_size, generator=generator) * 2 - 1,
                float(torch.rand(1, generator=generator)),
                torch.randn(sac.observation_size, generator=generator),
                False,
            )
        buffers.append(buffer.sample(rows, generator))
    return buffers


def test_update_is_the_sum_of_per_task_losses_and_moves_the_target_by_tau() -> None:
    sac = MultiTaskSAC(["a", "b"], 3, 2, SACOptions(hidden=(8,), lr=1e-2, tau=0.25), seed=0)
    generator = torch.Generator().manual_seed(0)
    batch = sac.stack(_batch(sac, generator))
    assert batch.inputs[:4, 3:].tolist() == [[1.0, 0.0]] * 4  # the task's one-hot follows the observation
    assert batch.inputs[4:, 3:].tolist() == [[0.0, 1.0]] * 4
    targets = sac.critic_targets(batch, torch.Generator().manual_seed(1))
    losses = sac.critic_losses(batch, targets)
    q1, q2 = sac.critic(batch.inputs, batch.action)
    by_hand = [
        critic_loss(q1[k * 4 : (k + 1) * 4], q2[k * 4 : (k + 1) * 4], targets[k * 4 : (k + 1) * 4]) for k in (0, 1)
    ]
    assert torch.allclose(losses, torch.stack(by_hand))
    old_target = [p.clone() for p in sac.target_critic.parameters()]
    sac.update(batch, targets, torch.Generator().manual_seed(2))
    for old, new, critic in zip(old_target, sac.target_critic.parameters(), sac.critic.parameters(), strict=True):
        assert torch.allclose(new, 0.75 * old + 0.25 * critic)


def test_state_dict_round_trip_continues_identically() -> None:
    def steps(sac: MultiTaskSAC, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            batch = sac.stack(_batch(sac, generator))
            sac.update(batch, sac.critic_targets(batch, generator), generator)

    first = MultiTaskSAC(["a", "b"], 3, 2, SACOptions(hidden=(8,)), seed=3)
    steps(first, 2, 0)
    second = MultiTaskSAC(["a", "b"], 3, 2, SACOptions(hidden=(8,)), seed=4)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as read from disk: no tensor shared
    steps(first, 2, 1)
    steps(second, 2, 1)
    assert torch.equal(first.log_alpha, second.log_alpha)
    for a, b in zip(first.policy.parameters(), second.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not math.isnan(float(first.log_alpha.detach().sum()))


def test_replay_buffer_grows_wraps_and_restores() -> None:
    buffer = ReplayBuffer(1500, 1, 1)
    for i in range(1600):
        buffer.add([i], [0.0], float(i), [i + 1], False)
    assert len(buffer) == 1500 and buffer.position == 100
    assert float(buffer.data["reward"][0, 0]) == 1500.0  # the oldest rows were replaced first
    copy = ReplayBuffer(1500, 1, 1)
    copy.load_state_dict(buffer.state_dict())
    a = buffer.sample(7, torch.Generator().manual_seed(0))
    b = copy.sample(7, torch.Generator().manual_seed(0))
    assert all(torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(ValueError, match="observation has shape"):
        ReplayBuffer(1500, 2, 1).load_state_dict(buffer.state_dict())


def test_loop_transference_is_a_real_adam_step_on_the_steps_own_batch_and_targets() -> None:
    """The exact transference the RL loop records for a gradient step equals ``1 - L_j(after) / L_j(before)`` with
    ``after`` = a real ``torch.optim.Adam`` step (on a copy of the critic and its optimizer state) on source i's
    critic loss alone, Adam's moments carried over from the earlier steps, every loss taken on that gradient step's
    own batches against its own fixed soft targets (not targets drawn again)."""
    from types import SimpleNamespace

    from mtlscope.engine.trainer import Schedule
    from mtlscope.rl.config import RLConfig
    from mtlscope.rl.loop import SACTrainer

    tasks = ["a", "b", "c"]
    sac = MultiTaskSAC(tasks, 3, 2, SACOptions(hidden=(16,), lr=1e-2), seed=0)
    config = RLConfig(
        iterations=1, gradient_steps=4, batch_size=6, hidden=[16], lr=1e-2, transference={"every_steps": 3}
    )
    environments = [SimpleNamespace(name=name) for name in tasks]
    trainer = SACTrainer(sac, environments, config, Schedule(4, 4, 4), seed=0, sink=None)  # type: ignore[arg-type]
    fill = torch.Generator().manual_seed(5)
    for k, buffer in enumerate(trainer.buffers):
        for _ in range(10):
            buffer.add(
                torch.randn(3, generator=fill),
                torch.rand(2, generator=fill) * 2 - 1,
                float(k) + float(torch.rand(1, generator=fill)),  # tasks on different reward scales
                torch.randn(3, generator=fill),
                False,
            )
    for step in (1, 2, 4):  # Adam's moments filled by three multi-task steps, none a transference step (3 is)
        trainer._gradient_step(step)
    before = copy.deepcopy(sac)
    replay, updates = (trainer.generators[name].get_state() for name in ("replay", "updates"))
    assert trainer._gradient_step(3) == ""  # step 3: transference measured before the update
    recorded = trainer.transference.overall["exact"].value()  # type: ignore[union-attr]
    first_order = trainer.transference.overall["first_order"].value()  # type: ignore[union-attr]
    assert recorded is not None and first_order is not None

    generator = torch.Generator()
    generator.set_state(replay)
    batch = before.stack([buffer.sample(6, generator) for buffer in trainer.buffers])
    generator.set_state(updates)
    targets = before.critic_targets(batch, generator)
    base = before.critic_losses(batch, targets).detach()
    expected = torch.empty(3, 3, dtype=torch.float64)
    for source in range(3):
        moved = copy.deepcopy(before)
        moved.critic_optimizer.zero_grad()
        moved.critic_losses(batch, targets)[source].backward()
        moved.critic_optimizer.step()
        with torch.no_grad():
            expected[source] = 1.0 - moved.critic_losses(batch, targets).double() / base.double()
    torch.testing.assert_close(recorded, expected, rtol=1e-4, atol=1e-6)
    # the first-order value -<g_j, Delta_i> / L_j is its linearization: same signs where the step is small
    assert torch.equal(torch.sign(first_order.diagonal()), torch.sign(expected.diagonal()))
