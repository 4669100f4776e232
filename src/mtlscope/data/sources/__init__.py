"""Catalog entries and file readers of the real datasets, one module per dataset family.

Importing this package registers every family's ``DatasetInfo`` in ``mtlscope.data.catalog``.
"""

from mtlscope.data.sources import celeba, cifar, mnist, mtan, multimnist, notmnist, weights  # noqa: F401  (registration)
