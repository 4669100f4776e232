"""Models: shared encoders, task heads and the ``MultiTaskModel`` that joins them."""

from mtlscope.models import deeplab, segnet  # noqa: F401  (registration of the dense encoders and heads)
from mtlscope.models.encoders import ENCODERS, Encoder
from mtlscope.models.heads import HEADS
from mtlscope.models.multitask import MAX_SEED, MultiTaskModel, build_model, derived_seed, is_seed

__all__ = ["ENCODERS", "HEADS", "MAX_SEED", "Encoder", "MultiTaskModel", "build_model", "derived_seed", "is_seed"]
