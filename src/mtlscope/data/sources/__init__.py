"""The dataset families of the catalog: each module registers its datasets (``mtlscope.data.catalog``) at import
and holds the readers of its files. Importing this package registers them all (``mtlscope data`` lists them).

Each family module is imported below, one line per family.
"""
