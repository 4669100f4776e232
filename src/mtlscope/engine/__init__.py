"""The engine: batches (``sampling``), the per-task gradient step (``step``), a method in your own training
loop (``backward``, the piece the step applies methods with), evaluation
(``evaluation``), optimizers, the loss scale C and the training loop (``trainer``).

Import from the submodules, e.g. ``from mtlscope.engine.trainer import Trainer``.
"""
