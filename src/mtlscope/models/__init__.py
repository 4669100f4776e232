"""Models: shared encoders, task heads and the ``MultiTaskModel`` that joins them."""

# (registration) the dense, Taskonomy and text encoders and heads
from mtlscope.models import deeplab, segnet, taskonomy, text  # noqa: F401
from mtlscope.models.encoders import ENCODERS, Encoder
from mtlscope.models.heads import HEADS
from mtlscope.models.multitask import MAX_SEED, MultiTaskModel, build_model, derived_seed, is_seed

__all__ = ["ENCODERS", "HEADS", "MAX_SEED", "Encoder", "MultiTaskModel", "build_model", "derived_seed", "is_seed"]
