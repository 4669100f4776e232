"""Catalog entries and file readers of the real datasets, one module per dataset family.

Importing this package registers every family's ``DatasetInfo`` in ``mtlscope.data.catalog``.
"""

from mtlscope.data.sources import (  # noqa: F401  (registration)
    celeba,
    cifar,
    glue,
    glue_datasets,
    mnist,
    movielens,
    mtan,
    multimnist,
    notmnist,
    taskonomy,
    weights,
)
