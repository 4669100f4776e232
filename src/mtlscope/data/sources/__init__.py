"""The real datasets of the catalog, one module per family: each registers its ``DatasetInfo`` at import
(``mtlscope.data.catalog.register_dataset``) and holds its file readers."""

from mtlscope.data.sources import cifar, multimnist  # noqa: F401  (registration)
