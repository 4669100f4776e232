"""The engine: batches (``sampling``), the per-task gradient step (``step``), a method in your own training
loop (``backward``, the piece the step applies methods with), evaluation
(``evaluation``), optimizers, the loss scale C, the training loop (``trainer``) and the contract of the hooks it
calls at checkpoints and steps (``hooks``: ``Probe``, ``ProbeContext``, ``StepContext``; the probes implement it).

Import from the submodules, e.g. ``from mtlscope.engine.trainer import Trainer``.
"""
