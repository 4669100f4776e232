"""Catalog entries and file readers of the real datasets, one module per dataset family; importing this package
registers them all (``mtlscope.data.catalog``)."""

from mtlscope.data.sources import mnist, notmnist  # noqa: F401  (registration)
