"""The engine: batches (``sampling``), the per-task gradient step (``step``), evaluation
(``evaluation``), optimizers, the loss scale C and the training loop (``trainer``).

Import from the submodules, e.g. ``from mtlscope.engine.trainer import Trainer``.
"""
