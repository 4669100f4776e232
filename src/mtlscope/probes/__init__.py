"""Trajectory probes (SPEC §4).

Standalone functions, usable on any PyTorch model:

- ``sharpness(model, loss_fn, inputs, targets, rho=1e-3, batch_size=128, iterations=20)`` — adaptive
  worst-case l_inf sharpness (SPEC §4.1);
- ``fim_trace(model, inputs, ...)`` — Fisher-information trace, minibatch and per-example (SPEC §4.2);
- ``grad_cov_trace(model, loss_fn, inputs, targets, ...)`` — gradient-covariance trace, gradient norm and
  noise scale (SPEC §4.3);
- ``per_example_gradients(model, loss_fn, inputs, targets)`` — the [N, P] per-example gradients they use.

Probes run by the trainer at checkpoints implement ``Probe`` and are registered in ``PROBES``
(``min_train_loss`` so far).
"""

from mtlscope.probes import min_train_loss  # noqa: F401  (registration)
from mtlscope.probes.base import PROBES, Probe, ProbeContext, ProbeValues
from mtlscope.probes.covariance import CovarianceResult, grad_cov_trace
from mtlscope.probes.fisher import FisherResult, fim_trace
from mtlscope.probes.per_example import per_example_gradients
from mtlscope.probes.sharpness import SharpnessResult, sharpness

__all__ = [
    "PROBES",
    "CovarianceResult",
    "FisherResult",
    "Probe",
    "ProbeContext",
    "ProbeValues",
    "SharpnessResult",
    "fim_trace",
    "grad_cov_trace",
    "per_example_gradients",
    "sharpness",
]
