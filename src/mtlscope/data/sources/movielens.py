"""MovieLens-1M (Harper & Konstan, 2015): 1,000,209 ratings of 3,706 movies by 6,040 users, with user and movie
attributes.

Files, in the folder ``ml-1m/`` of the data directory (what the official ``ml-1m.zip`` extracts to), Latin-1
text, one record per line, fields separated by ``::``:

- ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``; user ids 1..6040, movie ids 1..3952, ratings whole
  stars 1..5, timestamps seconds since the epoch;
- ``users.dat``: ``UserID::Gender::Age::Occupation::Zip-code``; gender ``M`` or ``F``; age one of the codes
  ``1, 18, 25, 35, 45, 50, 56`` (under 18, 18-24, ..., 56+); occupation 0..20; a zip code (text);
- ``movies.dat``: ``MovieID::Title::Genres``; genres ``|``-separated, each one of ``GENRES``.

``read_movielens(ratings, users, movies)`` reads and checks the three files strictly: every problem is one
``ValueError`` line naming the file, the line and what was expected (a wrong number of fields, a value out of its
range, an id listed twice, a rating of a user or movie the other files do not list, a pair rated twice, bytes
that are not Latin-1 text: control characters, or a file that decodes as UTF-8 with non-ASCII characters, i.e.
one re-saved as UTF-8).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlscope.data.catalog import Archive, DataFile, DatasetInfo, register_dataset

FOLDER = "ml-1m"
ARCHIVE_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ARCHIVE_MD5 = "c4d9eecfca2ab87c1945afe126590906"
#: The largest ids of the release (its README: "UserIDs range between 1 and 6040", "MovieIDs range between 1 and
#: 3952"); the recommendation model's embedding tables have one row per possible id.
MAX_USER_ID = 6040
MAX_MOVIE_ID = 3952
#: The age codes of ``users.dat`` (1: under 18, 18: 18-24, 25: 25-34, 35: 35-44, 45: 45-49, 50: 50-55, 56: 56+).
AGE_CODES: tuple[int, ...] = (1, 18, 25, 35, 45, 50, 56)
OCCUPATIONS = 21  # codes 0..20
GENDERS: tuple[str, ...] = ("M", "F")
#: The 18 genres of ``movies.dat``, in the order of the release's README (the multi-hot columns' order).
GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
RATINGS = (1, 5)

SOURCE = f"GroupLens, https://grouplens.org/datasets/movielens/1m/ ({ARCHIVE_URL}, unzipped)"

INFO = register_dataset(
    DatasetInfo(
        name="movielens-1m",
        description="MovieLens-1M: 1,000,209 ratings of 3,706 movies by 6,040 users, user and movie attributes",
        source=SOURCE,
        reference="Harper & Konstan. The MovieLens Datasets: History and Context. ACM TiiS 5(4), 2015",
        files=(
            DataFile("ratings", (f"{FOLDER}/ratings.dat",), archive="release"),
            DataFile("users", (f"{FOLDER}/users.dat",), archive="release"),
            DataFile("movies", (f"{FOLDER}/movies.dat",), archive="release"),
        ),
        archives=(Archive("release", "ml-1m.zip", ARCHIVE_URL, md5=ARCHIVE_MD5),),
    )
)

_BAD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")


@dataclass(frozen=True)
class Users:
    """``users.dat``, in file order: ids, gender index (0 M, 1 F), age index (into ``AGE_CODES``), occupation,
    zip code text."""

    ids: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray
    zip_codes: list[str]


@dataclass(frozen=True)
class Movies:
    """``movies.dat``, in file order: ids, titles, genres multi-hot (uint8 ``[N, 18]``, ``GENRES`` order)."""

    ids: np.ndarray
    titles: list[str]
    genres: np.ndarray


@dataclass(frozen=True)
class Ratings:
    """``ratings.dat``, in file order: user ids, movie ids, ratings 1..5, timestamps (int64 each)."""

    users: np.ndarray
    movies: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray


@dataclass(frozen=True)
class MovieLens:
    users: Users
    movies: Movies
    ratings: Ratings


def read_lines(path: Path) -> list[str]:
    """The lines of a Latin-1 ``.dat`` file (the final newline dropped); ``ValueError`` (one line) for bytes that
    are not Latin-1 text, an unreadable file, an empty file or an empty line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the file ({error.strerror or error})") from None
    high = _NON_ASCII.search(data)
    if high is not None:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not UTF-8: Latin-1, as expected
        else:
            line = data[: high.start()].count(b"\n") + 1
            raise ValueError(
                f"{path} line {line}: UTF-8 encoded text; expected Latin-1 (the official files; re-encode it, "
                "e.g. iconv -f utf-8 -t latin1)"
            )
    bad = _BAD_BYTES.search(data)
    if bad is not None:
        line = data[: bad.start()].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line}: control byte 0x{data[bad.start()]:02x}; expected Latin-1 text (the official files)"
        )
    lines = data.decode("latin-1").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty file")
    for number, text in enumerate(lines, start=1):
        if text.endswith("\r"):
            lines[number - 1] = text = text[:-1]
        if not text:
            raise ValueError(f"{path} line {number}: empty line")
    return lines


def _integer(text: str, low: int, high: int, path: Path, number: int, what: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{path} line {number}: {what} {text[:20]!r}; expected an integer in {low}..{high}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{path} line {number}: {what} {value}; expected an integer in {low}..{high}")
    return value


def _fields(line: str, count: int, path: Path, number: int, layout: str) -> list[str]:
    fields = line.split("::")
    if len(fields) != count:
        raise ValueError(f"{path} line {number}: expected {count} fields '{layout}', got {len(fields)}")
    return fields


def read_users(path: str | os.PathLike[str]) -> Users:
    """Read and check ``users.dat`` (module docstring)."""
    path = Path(path)
    lines = read_lines(path)
    ids = np.empty(len(lines), dtype=np.int64)
    gender = np.empty(len(lines), dtype=np.int64)
    age = np.empty(len(lines), dtype=np.int64)
    occupation = np.empty(len(lines), dtype=np.int64)
    zips: list[str] = []
    seen: dict[int, int] = {}
    for index, line in enumerate(lines):
        number = index + 1
        user, sex, years, job, zip_code = _fields(line, 5, path, number, "UserID::Gender::Age::Occupation::Zip-code")
        ids[index] = identifier = _integer(user, 1, MAX_USER_ID, path, number, "UserID")
        if identifier in seen:
            raise ValueError(
                f"{path} line {number}: UserID {identifier} is listed again (first on line {seen[identifier]})"
            )
        seen[identifier] = number
        if sex not in GENDERS:
            raise ValueError(f"{path} line {number}: Gender {sex[:20]!r}; expected M or F")
        gender[index] = GENDERS.index(sex)
        if not (years.isascii() and years.isdigit()) or int(years) not in AGE_CODES:
            raise ValueError(
                f"{path} line {number}: Age {years[:20]!r}; expected one of the codes {', '.join(map(str, AGE_CODES))}"
            )
        age[index] = AGE_CODES.index(int(years))
        occupation[index] = _integer(job, 0, OCCUPATIONS - 1, path, number, "Occupation")
        if not zip_code.strip():
            raise ValueError(f"{path} line {number}: empty Zip-code")
        zips.append(zip_code)
    return Users(ids, gender, age, occupation, zips)


def read_movies(path: str | os.PathLike[str]) -> Movies:
    """Read and check ``movies.dat`` (module docstring)."""
    path = Path(path)
    lines = read_lines(path)
    ids = np.empty(len(lines), dtype=np.int64)
    genres = np.zeros((len(lines), len(GENRES)), dtype=np.uint8)
    titles: list[str] = []
    seen: dict[int, int] = {}
    column = {genre: position for position, genre in enumerate(GENRES)}
    for index, line in enumerate(lines):
        number = index + 1
        movie, title, listed = _fields(line, 3, path, number, "MovieID::Title::Genres")
        ids[index] = identifier = _integer(movie, 1, MAX_MOVIE_ID, path, number, "MovieID")
        if identifier in seen:
            raise ValueError(
                f"{path} line {number}: MovieID {identifier} is listed again (first on line {seen[identifier]})"
            )
        seen[identifier] = number
        if not title.strip():
            raise ValueError(f"{path} line {number}: empty Title")
        titles.append(title)
        for genre in listed.split("|"):
            if genre not in column:
                raise ValueError(
                    f"{path} line {number}: genre {genre[:30]!r}; expected '|'-separated genres among "
                    f"{', '.join(GENRES)}"
                )
            if genres[index, column[genre]]:
                raise ValueError(f"{path} line {number}: genre {genre!r} is listed twice")
            genres[index, column[genre]] = 1
    return Movies(ids, titles, genres)


def read_ratings(path: str | os.PathLike[str], users: Users, movies: Movies) -> Ratings:
    """Read and check ``ratings.dat`` (module docstring): every rating's user and movie must be listed in
    ``users`` and ``movies``, and no (user, movie) pair is rated twice."""
    path = Path(path)
    lines = read_lines(path)
    known_users = np.zeros(MAX_USER_ID + 1, dtype=bool)
    known_users[users.ids] = True
    known_movies = np.zeros(MAX_MOVIE_ID + 1, dtype=bool)
    known_movies[movies.ids] = True
    columns = np.empty((4, len(lines)), dtype=np.int64)
    layout = "UserID::MovieID::Rating::Timestamp"
    for index, line in enumerate(lines):
        number = index + 1
        user, movie, rating, timestamp = _fields(line, 4, path, number, layout)
        columns[0, index] = u = _integer(user, 1, MAX_USER_ID, path, number, "UserID")
        columns[1, index] = m = _integer(movie, 1, MAX_MOVIE_ID, path, number, "MovieID")
        columns[2, index] = _integer(rating, RATINGS[0], RATINGS[1], path, number, "Rating")
        columns[3, index] = _integer(timestamp, 0, 2**62, path, number, "Timestamp")
        if not known_users[u]:
            raise ValueError(f"{path} line {number}: UserID {u} is not in users.dat")
        if not known_movies[m]:
            raise ValueError(f"{path} line {number}: MovieID {m} is not in movies.dat")
    pairs = columns[0] * (MAX_MOVIE_ID + 1) + columns[1]
    order = np.argsort(pairs, kind="stable")
    repeated = np.nonzero(pairs[order][1:] == pairs[order][:-1])[0]
    if len(repeated):
        first_line, again = sorted(int(order[i]) + 1 for i in (repeated[0], repeated[0] + 1))
        u, m = columns[0, again - 1], columns[1, again - 1]
        raise ValueError(
            f"{path} line {again}: UserID {u} rates MovieID {m} again (first on line {first_line}); "
            "expected one rating per pair"
        )
    return Ratings(*columns)


def read_movielens(
    ratings: str | os.PathLike[str], users: str | os.PathLike[str], movies: str | os.PathLike[str]
) -> MovieLens:
    """Read and check the three files (module docstring)."""
    user_table = read_users(users)
    movie_table = read_movies(movies)
    return MovieLens(user_table, movie_table, read_ratings(ratings, user_table, movie_table))


# -- the features of a (user, movie) pair -------------------------------------------------------------------

#: Characters of the zip code kept as a feature (the US ZIP3 area: ``"48067"`` -> 480).
ZIP_PREFIX = 3
#: The categorical input columns of a pair and their number of values (one embedding row each); the ids are the
#: files' own (row 0 of the user, movie and title tables is unused), ``zip`` is ``1 + int(prefix)`` for a zip
#: code whose first ``ZIP_PREFIX`` characters are digits and 0 otherwise (non-US codes), ``title`` is ``1 +`` the
#: rank of the movie's title among the distinct titles of ``movies.dat`` (sorted).
CATEGORICAL: tuple[tuple[str, int], ...] = (
    ("user", MAX_USER_ID + 1),
    ("gender", len(GENDERS)),
    ("age", len(AGE_CODES)),
    ("occupation", OCCUPATIONS),
    ("zip", 10**ZIP_PREFIX + 1),
    ("movie", MAX_MOVIE_ID + 1),
    ("title", MAX_MOVIE_ID + 1),
)
#: Every input column: the categorical ones, then the 18 genre indicators (multi-hot, ``GENRES`` order).
COLUMNS: tuple[str, ...] = (*(name for name, _ in CATEGORICAL), *(f"genre:{genre}" for genre in GENRES))


def zip_feature(zip_code: str) -> int:
    """The ``zip`` column of a zip code (``CATEGORICAL``)."""
    prefix = zip_code[:ZIP_PREFIX]
    return 1 + int(prefix) if len(prefix) == ZIP_PREFIX and prefix.isascii() and prefix.isdigit() else 0


def pair_features(data: MovieLens, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """float32 ``[N, len(COLUMNS)]``: the input columns of the pairs ``(users[i], movies[i])`` (ids of the files;
    every id must be listed in ``users.dat`` / ``movies.dat``). Integers are exact in float32 (all below 2**24)."""
    per_user = np.zeros((MAX_USER_ID + 1, 4), dtype=np.float32)
    per_user[data.users.ids] = np.stack(
        [
            data.users.gender,
            data.users.age,
            data.users.occupation,
            np.asarray([zip_feature(code) for code in data.users.zip_codes], dtype=np.int64),
        ],
        axis=1,
    )
    distinct = sorted(set(data.movies.titles))
    rank = {title: position + 1 for position, title in enumerate(distinct)}
    per_movie = np.zeros((MAX_MOVIE_ID + 1, 1 + len(GENRES)), dtype=np.float32)
    per_movie[data.movies.ids, 0] = [rank[title] for title in data.movies.titles]
    per_movie[data.movies.ids, 1:] = data.movies.genres
    out = np.empty((len(users), len(COLUMNS)), dtype=np.float32)
    out[:, 0] = users
    out[:, 1:5] = per_user[users]
    out[:, 5] = movies
    out[:, 6:] = per_movie[movies]
    return out
