"""Trajectory probes (Mueller et al., TMLR 2025, §4 and App. B).

Standalone functions, usable on any PyTorch model:

- ``sharpness(model, loss_fn, inputs, targets, rho=1e-3, batch_size=128, iterations=20)`` — adaptive
  worst-case l_inf sharpness (Mueller et al., TMLR 2025, eq. 3 and App. B.1);
- ``fim_trace(model, inputs, ...)`` — Fisher-information trace, minibatch and per-example (Mueller et al. 2025, eq. 5);
- ``grad_cov_trace(model, loss_fn, inputs, targets, ...)`` — gradient-covariance trace, gradient norm and
  noise scale (Mueller et al., TMLR 2025, eq. 4 and App. B.3);
- ``grad_similarity(jacobian)`` — cosine of each task gradient with the UMTG (Mueller et al., TMLR 2025, eq. 6);
- ``affinity(model, setting, batch, optimizer)`` — inter-task affinity matrices, exact and first-order
  (Fifty et al. 2020, eq. 1);
- ``per_example_gradients(model, loss_fn, inputs, targets)`` — the [N, P] per-example gradients they use.

Probes run by the trainer implement ``Probe`` and are registered in ``PROBES``: ``sharpness``,
``fim_trace``, ``grad_cov_trace``, ``grad_similarity``, ``affinity`` and ``min_train_loss``.
"""

from mtlscope.probes import min_train_loss  # noqa: F401  (registration)
from mtlscope.probes.affinity import AffinityResult, affinity
from mtlscope.probes.base import PROBES, Probe, ProbeContext, ProbeValues, StepContext, build_probe
from mtlscope.probes.covariance import CovarianceResult, grad_cov_trace
from mtlscope.probes.fisher import FisherResult, fim_trace
from mtlscope.probes.per_example import per_example_gradients
from mtlscope.probes.sharpness import SharpnessResult, sharpness
from mtlscope.probes.similarity import grad_similarity

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
    "sharpness",
]
