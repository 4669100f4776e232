"""A tiny MovieLens-1M in the official format (``ml-1m/*.dat``, Latin-1, ``::``-separated) for the tests."""

from __future__ import annotations

from pathlib import Path

USERS = [  # UserID, Gender, Age, Occupation, Zip-code
    (1, "F", 1, 10, "48067"),
    (2, "M", 56, 16, "70072"),
    (3, "M", 25, 15, "55117"),
    (5, "M", 25, 20, "T8H1N"),  # a non-US code; user 4 is absent (ids need not be contiguous)
    (6, "F", 50, 9, "55117"),
    (6040, "M", 18, 0, "11106"),
]
MOVIES = [  # MovieID, Title, Genres
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (2, "Jumanji (1995)", "Adventure|Children's|Fantasy"),
    (3, "Grumpier Old Men (1995)", "Comedy|Romance"),
    (5, "Cité des enfants perdus, La (1995)", "Adventure|Sci-Fi"),  # Latin-1 é
    (7, "Sabrina (1995)", "Comedy|Romance"),
    (10, "GoldenEye (1995)", "Action|Adventure|Thriller"),
    (11, "American President, The (1995)", "Comedy|Drama|Romance"),
    (3952, "Contender, The (2000)", "Drama|Thriller"),
    (3000, "Unrated Movie (1999)", "Documentary"),  # rated by no one: a candidate unwatched movie only
]
RATINGS = [  # UserID, MovieID, Rating, Timestamp
    (1, 1, 5, 978300760),
    (1, 2, 3, 978302109),
    (1, 3, 3, 978301968),
    (2, 5, 4, 978300275),
    (2, 7, 5, 978824291),
    (2, 10, 3, 978302268),
    (3, 1, 2, 978300720),
    (3, 11, 4, 978302039),
    (3, 3952, 1, 978300055),
    (5, 2, 5, 978824388),
    (5, 5, 4, 978300180),
    (5, 10, 2, 978301777),
    (6, 3, 1, 978300760),
    (6, 7, 4, 978302109),
    (6, 11, 3, 978301968),
    (6040, 1, 4, 978824351),
    (6040, 5, 3, 978824139),
    (6040, 3952, 5, 978300275),
]


def lines(rows: list[tuple]) -> list[str]:
    return ["::".join(str(value) for value in row) for row in rows]


def write_movielens(
    root: Path, *, ratings: list[str] | None = None, users: list[str] | None = None, movies: list[str] | None = None
) -> Path:
    """Write ``root/ml-1m/{ratings,users,movies}.dat`` (the given lines, else the tables above) in Latin-1 with
    ``\\n`` line ends and a final newline, as the official files; return the ``ml-1m`` folder."""
    folder = root / "ml-1m"
    folder.mkdir(parents=True, exist_ok=True)
    for name, given, rows in (("ratings", ratings, RATINGS), ("users", users, USERS), ("movies", movies, MOVIES)):
        text = "\n".join(given if given is not None else lines(rows)) + "\n"
        (folder / f"{name}.dat").write_bytes(text.encode("latin-1"))
    return folder
