"""``movielens``: MovieLens-1M user-movie pairs with a watch task and a rating task (shared-input layout).

The setting of Fifty et al. (2020, §5.2 Table 3 and App. D.6), after Wang et al. (2020, "Small towers make big
differences"): every example is a (user, movie) pair; ``watch`` predicts whether the user watched (rated) the
movie, ``rating`` the rating (1-5 stars) the user gave, a regression "conditioned on click": pairs the user did
not watch are "zeroed out at training and during evaluation" (rating target 0, masked out of the loss and the
metrics by ``invalid=0``).

Pairs (``sample_pairs``): the paper "augment[s] the dataset with negative examples and sample[s] 1.6 million
samples from the augmented dataset such that each user has an equal number of watched and unwatched videos". For
each user (in id order) with ``n`` ratings: ``m = round(sample_fraction * n)`` of the user's ratings, drawn
without replacement, and ``negatives * m`` movies of ``movies.dat`` the user did not rate, drawn uniformly without
replacement (``m`` is lowered when the user has rated so many movies that fewer than ``negatives * m`` are left:
the balance is kept). ``sample_fraction=0.8`` and ``negatives=1`` give about 0.8 x 2 x 1,000,209 = 1.6 million
pairs (a little fewer where a heavy rater runs out of unrated movies): the paper's 1.6 million. The pairs are
shuffled and split at random into train / val / test (``val_fraction``, ``test_fraction``; the paper does not say
how it splits); ``train_size``, ``val_size``, ``test_size`` keep at most that many pairs of each split (CPU
subsets). Every draw comes from ``seed``.

Inputs: float32 ``[N, 25]``, the columns ``mtlscope.data.sources.movielens.COLUMNS`` (user id, gender, age,
occupation, zip prefix, movie id, title, 18 genre indicators), split back by the ``movielens`` encoder
(``mtlscope.models.recommender``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from mtlscope.data.catalog import locate
from mtlscope.data.sources import movielens as source
from mtlscope.losses import resolve_loss
from mtlscope.metrics import resolve_metric
from mtlscope.options import NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_arrays
from mtlscope.settings.registry import register
from mtlscope.settings.setting import Setting

TASKS: tuple[str, ...] = ("watch", "rating")
DEFAULT_MODEL = {"encoder": {"name": "movielens"}, "head": {"name": "linear"}}
#: The rating target of a pair the user did not watch (masked out of the rating loss and metrics).
UNWATCHED = 0.0
REFERENCE = (
    "Harper & Konstan. The MovieLens Datasets: History and Context. ACM TiiS 2015; Fifty et al. Measuring and "
    "Harnessing Transference in Multi-Task Learning, 2020 (§5.2, App. D.6); Wang et al. Small Towers Make Big "
    "Differences, 2020"
)
Fraction = Annotated[float, Field(gt=0, lt=1)]


def sample_pairs(
    data: source.MovieLens, *, negatives: int, sample_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user ids, movie ids, ratings)`` of the sampled pairs (module docstring), rating 0 for an unwatched pair;
    per user, its watched pairs then its unwatched ones, users in id order."""
    ratings = data.ratings
    order = np.lexsort((ratings.movies, ratings.users))
    users, movies, stars = ratings.users[order], ratings.movies[order], ratings.ratings[order]
    catalogue = np.sort(data.movies.ids)
    starts = np.searchsorted(users, np.sort(data.users.ids), side="left")
    stops = np.searchsorted(users, np.sort(data.users.ids), side="right")
    chosen_users, chosen_movies, chosen_ratings = [], [], []
    for user, start, stop in zip(np.sort(data.users.ids), starts, stops):
        count = int(stop - start)
        if count == 0:
            continue
        unwatched = np.setdiff1d(catalogue, movies[start:stop], assume_unique=True)
        keep = min(round(sample_fraction * count), len(unwatched) // negatives)
        if keep == 0:
            continue
        picked = start + rng.choice(count, size=keep, replace=False)
        drawn = rng.choice(unwatched, size=keep * negatives, replace=False)
        chosen_users.append(np.full(keep * (1 + negatives), user, dtype=np.int64))
        chosen_movies.append(np.concatenate([movies[picked], drawn]))
        chosen_ratings.append(np.concatenate([stars[picked], np.zeros(len(drawn), dtype=np.int64)]))
    if not chosen_users:
        raise ValueError("movielens: no pairs to sample (no user has a rating and an unrated movie)")
    return np.concatenate(chosen_users), np.concatenate(chosen_movies), np.concatenate(chosen_ratings)


def split_sizes(total: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Pairs per split: ``round(fraction * total)`` for val and test, the rest for train; ``ValueError`` (one line)
    when a split would be empty."""
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"movielens options val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}"
        )
    val, test = round(val_fraction * total), round(test_fraction * total)
    sizes = {"train": total - val - test, "val": val, "test": test}
    for split, size in sizes.items():
        if size < 1:
            raise ValueError(f"movielens: split {split} would be empty ({total} pairs in all); use more data")
    return sizes


@register("movielens", "MovieLens-1M: watch (binary) and rating (masked regression) of user-movie pairs (real data)")
def movielens(
    *,
    negatives: PositiveInt = 1,
    sample_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.1,
    train_size: PositiveInt | None = None,
    val_size: PositiveInt | None = None,
    test_size: PositiveInt | None = None,
    rating_loss: Literal["mse", "l1"] = "mse",
    seed: NonNegativeInt = 0,
    data_dir: str | None = None,
) -> Setting:
    paths = locate("movielens-1m", data_dir)
    data = source.read_movielens(paths["ratings"], paths["users"], paths["movies"])
    rng = np.random.default_rng(seed)
    users, movies, ratings = sample_pairs(data, negatives=negatives, sample_fraction=sample_fraction, rng=rng)
    sizes = split_sizes(len(users), val_fraction, test_fraction)
    permutation = rng.permutation(len(users))
    limits = {"train": train_size, "val": val_size, "test": test_size}
    arrays = {}
    start = 0
    for split, size in sizes.items():
        rows = permutation[start : start + size][: limits[split]]
        start += size
        arrays[split] = (
            torch.from_numpy(source.pair_features(data, users[rows], movies[rows])),
            {
                "watch": torch.from_numpy((ratings[rows] > 0).astype(np.float32)),
                "rating": torch.from_numpy(ratings[rows].astype(np.float32)),
            },
        )
    masked = {"invalid": UNWATCHED}
    specs = [
        TaskSpec(
            "watch",
            1,
            loss="binary_cross_entropy",
            metrics=[resolve_metric(name) for name in ("accuracy", "auc")],
            primary_metric="accuracy",
            description="did the user watch (rate) the movie: 1 = a rating of ratings.dat, 0 = a sampled unrated movie",
        ),
        TaskSpec(
            "rating",
            1,
            loss=resolve_loss({"name": rating_loss, **masked}),
            metrics=[resolve_metric({"name": name, **masked}) for name in ("rmse", "mae", "rounded_accuracy")],
            primary_metric="rmse",
            description="the user's rating, 1-5 stars (target 0 = not watched: masked out of loss and metrics)",
        ),
    ]
    return from_arrays(
        "movielens",
        specs,
        arrays,
        layout="shared-input",
        default_model=DEFAULT_MODEL,
        description=f"MovieLens-1M pairs: watch and rating, {len(users):,} sampled pairs",
        reference=REFERENCE,
        options={
            "negatives": negatives,
            "sample_fraction": sample_fraction,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
            "rating_loss": rating_loss,
            "seed": seed,
            "data_dir": data_dir,
        },
    )
