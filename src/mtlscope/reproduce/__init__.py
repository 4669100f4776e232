"""Paper presets and ``mtlscope reproduce``: one preset per figure or table of the papers (docs/experiments.md).

- ``load_preset(name_or_path)`` / ``available_presets()``: the presets (``preset``);
- ``OUTPUTS``: the figures and tables a preset can ask for (``outputs``);
- ``reproduce(preset, out)``: sweep + outputs + report + summary (``runner``).
"""

from mtlscope.reproduce.outputs import OUTPUTS, Produced
from mtlscope.reproduce.preset import Preset, available_presets, load_preset
from mtlscope.reproduce.runner import ReproduceResult, reproduce

__all__ = ["OUTPUTS", "Preset", "Produced", "ReproduceResult", "available_presets", "load_preset", "reproduce"]
