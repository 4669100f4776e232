"""Trajectory probes (Mueller et al., TMLR 2025, §4 and App. B).

Standalone functions, usable on any PyTorch model (an ``nn.Module``) and loss (a function ``fn(outputs, targets)
-> mean loss``, a registered loss name or an ``mtlscope.losses.Loss``); bad input is one ``ValueError`` line:

- ``sharpness(model, loss_fn, inputs, targets, rho=1e-3, batch_size=128, iterations=20)`` — adaptive
  worst-case l_inf sharpness (Mueller et al., TMLR 2025, eq. 3 and App. B.1);
- ``fim_trace(model, inputs, loss=..., targets=...)`` — Fisher-information trace, minibatch and per-example
  (Mueller et al. 2025, eq. 5);
- ``grad_cov_trace(model, loss_fn, inputs, targets, ...)`` — gradient-covariance trace, gradient norm and
  noise scale (Mueller et al., TMLR 2025, eq. 4 and App. B.3);
- ``grad_similarity(task_gradients(losses, shared))`` — cosine of each task gradient with the UMTG (Mueller et
  al., TMLR 2025, eq. 6);
- ``task_affinity(losses, shared, optimizer)`` (any model; ``losses()`` gives the K task losses of a batch) and
  ``affinity(model, setting, batch, optimizer)`` (an mtlscope model) — inter-task affinity matrices, exact and
  first-order (Fifty et al. 2020, eq. 1);
- ``per_example_gradients(model, loss_fn, inputs, targets)`` — the [N, P] per-example gradients they use;
  ``per_example_squared_norms(model, loss_fn, inputs, targets)`` — their [N] squared norms, from per-layer
  formulas (Linear, Conv2d, eval-mode BatchNorm) without forming them.

Probes run by the trainer implement ``Probe`` and are registered in ``PROBES``: ``sharpness``,
``fim_trace``, ``grad_cov_trace``, ``grad_similarity``, ``affinity`` and ``min_train_loss``.
"""

from mtlscope.probes import min_train_loss  # noqa: F401  (registration)
from mtlscope.probes.affinity import AffinityResult, affinity, task_affinity
from mtlscope.probes.base import PROBES, Probe, ProbeContext, ProbeValues, StepContext, build_probe
from mtlscope.probes.covariance import CovarianceResult, grad_cov_trace
from mtlscope.probes.fisher import FisherResult, fim_trace
from mtlscope.probes.per_example import per_example_gradients
from mtlscope.probes.per_example_norms import per_example_squared_norms
from mtlscope.probes.sharpness import SharpnessResult, sharpness
from mtlscope.probes.similarity import grad_similarity, task_gradients

__all__ = [
    "PROBES",
    "AffinityResult",
    "CovarianceResult",
    "FisherResult",
    "Probe",
    "ProbeContext",
    "ProbeValues",
    "SharpnessResult",
    "StepContext",
    "affinity",
    "build_probe",
    "fim_trace",
    "grad_cov_trace",
    "grad_similarity",
    "per_example_gradients",
    "per_example_squared_norms",
    "sharpness",
    "task_affinity",
    "task_gradients",
]
