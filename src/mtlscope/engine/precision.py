"""Mixed precision for training steps (``training.autocast``): the model's forward passes in bfloat16, the rest in
float32.

With ``autocast: bf16`` every forward pass of the shared encoder and of each head *inside a training step* runs
under ``torch.autocast(<the model's device type>, dtype=torch.bfloat16)`` (matrix products and convolutions in
bfloat16, reductions and normalizations in float32, as torch's autocast lists decide), and each of those modules
returns its output cast back to the parameters' dtype (float32). So the task losses, the task gradients at the
representation, the parameters' gradients (parameters stay float32), the methods' combinations (Gramians, QPs,
projections) and the optimizer all stay in float32; only the arithmetic inside the encoder and the heads is
bfloat16. This covers every forward pass the step makes — the batched one, the per-task ones of the multi-input
layout and the lookahead's.

Outside training steps nothing changes: checkpoint evaluation and every probe run in float32, without autocast.
``off`` (the default) installs nothing, so runs without it compute exactly what they computed before the option.
The mode is part of the config (``training.autocast``, recorded in ``config.yaml``, and in the run id when on).

bfloat16 autocast exists on CPU and CUDA; on a CPU without native bfloat16 arithmetic it is slower than float32
(it is meant for GPUs: halves activation memory and uses tensor cores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mtlscope.models.multitask import MultiTaskModel

#: The values of ``training.autocast``.
AUTOCAST_MODES: tuple[str, ...] = ("off", "bf16")


class TrainingAutocast:
    """Autocast of ``model``'s encoder and heads during ``training_step()`` blocks (``mode``: ``"off"`` or
    ``"bf16"``). Hooks are installed at the start of each block and removed at its end, so the model carries none
    between steps (copies, saved weights and probes never see them)."""

    def __init__(self, model: MultiTaskModel, mode: str = "off") -> None:
        if mode not in AUTOCAST_MODES:
            raise ValueError(f"training.autocast: expected one of {', '.join(AUTOCAST_MODES)}, got {mode!r:.40}")
        self.model = model
        self.mode = mode
        self._regions: list[torch.autocast] = []

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @contextlib.contextmanager
    def training_step(self) -> Iterator[None]:
        """The block of one training step: the model's forward passes in it run under autocast."""
        if not self.enabled:
            yield
            return
        first = next(self.model.parameters())
        device_type, dtype = first.device.type, first.dtype
        modules: list[nn.Module] = [self.model.encoder, *self.model.heads.values()]
        handles = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(lambda _module, _args: self._enter(device_type)))
            handles.append(module.register_forward_hook(lambda _module, _args, output: self._exit(output, dtype)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            while self._regions:  # a forward pass that raised never reached its exit hook
                self._regions.pop().__exit__(None, None, None)

    def _enter(self, device_type: str) -> None:
        region = torch.autocast(device_type, dtype=torch.bfloat16)
        region.__enter__()
        self._regions.append(region)

    def _exit(self, output: Any, dtype: torch.dtype) -> Any:
        """Leave the module's autocast region; its output back in the parameters' dtype (float32 as a rule)."""
        if self._regions:
            self._regions.pop().__exit__(None, None, None)
        if isinstance(output, Tensor) and output.dtype in (torch.bfloat16, torch.float16):
            return output.to(dtype)
        return output
