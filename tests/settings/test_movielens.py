"""The movielens setting on a tiny MovieLens-1M in the official format: features, labels, sampling, splits, masks,
strict parsing, the recommendation encoder and a short run with every probe."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import mtlscope
from mtlscope import settings
from mtlscope.data.catalog import MissingDataError
from mtlscope.data.sources import movielens as source
from mtlscope.engine.hooks import probe_mode
from mtlscope.models.multitask import build_model
from tests.data.movielens_files import MOVIES, RATINGS, USERS, lines, write_movielens

SMALL = {"sample_fraction": 1.0, "val_fraction": 0.2, "test_fraction": 0.2}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_movielens(tmp_path / "data")
    monkeypatch.setenv("MTLSCOPE_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def _all_pairs(setting: settings.Setting) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    watch, rating = setting.tasks
    return {
        split: (getattr(watch, split).inputs, getattr(watch, split).targets, getattr(rating, split).targets)
        for split in ("train", "val", "test")
    }


def test_features_and_labels_are_those_of_the_files(root: Path) -> None:
    setting = settings.get("movielens", **SMALL)
    assert setting.layout == "shared-input" and setting.input_shape == (25,)
    assert setting.task_names == ("watch", "rating")
    assert setting.default_model == {"encoder": {"name": "movielens"}, "head": {"name": "linear"}}
    users = {row[0]: row for row in USERS}
    movies = {row[0]: row for row in MOVIES}
    rated = {(u, m): r for u, m, r, _ in RATINGS}
    titles = sorted(title for _, title, _ in MOVIES)
    for inputs, watch, rating in _all_pairs(setting).values():
        assert inputs.dtype == torch.float32 and watch.dtype == rating.dtype == torch.float32
        for row, w, r in zip(inputs.tolist(), watch.tolist(), rating.tolist()):
            assert all(float(v).is_integer() for v in row)
            user, gender, age, occupation, zip_code, movie, title = (int(v) for v in row[:7])
            _, sex, years, job, code = users[user]
            assert (gender, age, occupation) == ("MF".index(sex), source.AGE_CODES.index(years), job)
            assert zip_code == (0 if code == "T8H1N" else 1 + int(code[:3]))
            _, name, genres = movies[movie]
            assert title == 1 + titles.index(name)
            assert row[7:] == [float(genre in genres.split("|")) for genre in source.GENRES]
            assert w == float((user, movie) in rated)  # watched = rated
            assert r == rated.get((user, movie), 0)  # the rating; 0 (masked) for an unwatched pair
    assert zip_code >= 0 and max(inputs[:, 4].max() for inputs, _, _ in _all_pairs(setting).values()) <= 1000


def test_negative_sampling_is_seeded_balanced_and_avoids_watched_pairs(root: Path) -> None:
    first = _all_pairs(settings.get("movielens", **SMALL))
    again = _all_pairs(settings.get("movielens", **SMALL))
    other = _all_pairs(settings.get("movielens", **SMALL, seed=1))
    for split in first:
        for a, b in zip(first[split], again[split]):
            assert torch.equal(a, b)  # same seed, same pairs and splits
    assert any(not torch.equal(first[s][0], other[s][0]) for s in first)
    pairs = {}
    for split, (inputs, watch, _) in first.items():
        for row, w in zip(inputs.tolist(), watch.tolist()):
            key = (int(row[0]), int(row[5]))
            assert key not in pairs, f"pair {key} in {pairs.get(key)} and {split}"  # no pair twice, no overlap
            pairs[key] = split if w else "neg"
    rated = {(u, m) for u, m, _, _ in RATINGS}
    # sample_fraction 1: every rating is a watched pair, and each user has as many unwatched pairs
    assert {key for key, kind in pairs.items() if kind != "neg"} == rated
    for user, *_ in USERS:
        negatives = [m for (u, m), kind in pairs.items() if u == user and kind == "neg"]
        assert len(negatives) == sum(1 for u, _ in rated if u == user)
        assert not any((user, m) in rated for m in negatives)  # no collision with a watched pair
    sizes = {split: len(values[0]) for split, values in first.items()}
    assert sizes == {"train": 22, "val": 7, "test": 7}  # 36 pairs: round(0.2 * 36) = 7 each


def test_fraction_negatives_and_split_caps(root: Path) -> None:
    setting = settings.get(
        "movielens", sample_fraction=0.5, negatives=2, val_fraction=0.2, test_fraction=0.2, train_size=5
    )
    pairs = _all_pairs(setting)
    watch = torch.cat([values[1] for values in pairs.values()])
    # per user round(0.5 * 3) = 2 watched and 4 unwatched pairs (each user has 6 unrated movies of 9)
    total = 6 * (2 + 4)
    assert len(pairs["val"][0]) == len(pairs["test"][0]) == round(0.2 * total) and len(pairs["train"][0]) == 5
    assert int(watch.sum()) <= 12
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be below 1"):
        settings.get("movielens", val_fraction=0.6, test_fraction=0.5)


def test_the_rating_loss_and_metrics_see_only_watched_pairs(root: Path) -> None:
    setting = settings.get("movielens", **SMALL)
    rating = setting.task("rating")
    targets = rating.train.targets
    outputs = torch.linspace(0.0, 6.0, len(targets))[:, None]
    watched = targets > 0
    expected = ((outputs[:, 0][watched] - targets[watched]) ** 2).mean()
    torch.testing.assert_close(rating.loss(outputs, targets), expected)
    metrics = {name: metric(outputs, targets) for name, metric in rating.metrics.items()}
    assert metrics["rmse"] == pytest.approx(float(expected.sqrt()), rel=1e-6)
    assert metrics["rounded_accuracy"] == pytest.approx(
        float((outputs[:, 0][watched].round() == targets[watched]).double().mean())
    )
    assert rating.loss.fisher == "empirical"  # sampled labels would not carry the mask
    assert setting.task("watch").loss.fisher == "bernoulli"


def test_a_missing_file_is_one_line(root: Path) -> None:
    (root / "ml-1m" / "users.dat").unlink()
    with pytest.raises(MissingDataError) as error:
        settings.get("movielens")
    message = str(error.value)
    assert "ml-1m/users.dat" in message and "mtlscope data download movielens-1m" in message and "\n" not in message


BAD = [
    ("ratings", [*lines(RATINGS[:3]), "1::5::4"], "ratings.dat line 4: expected 4 fields"),
    ("ratings", [*lines(RATINGS[:3]), "1::x5::4::978300760"], "line 4: MovieID 'x5'; expected an integer"),
    ("ratings", [*lines(RATINGS[:3]), "1::5::6::978300760"], "line 4: Rating 6; expected an integer in 1..5"),
    ("ratings", [*lines(RATINGS[:3]), "1::5::0::978300760"], "ratings.dat line 4: Rating 0; expected"),
    ("ratings", [*lines(RATINGS[:3]), "4::5::3::978300760"], "ratings.dat line 4: UserID 4 is not in users.dat"),
    ("ratings", [*lines(RATINGS[:3]), "1::4::3::978300760"], "ratings.dat line 4: MovieID 4 is not in movies.dat"),
    ("ratings", [*lines(RATINGS[:3]), "1::2::4::978300761"], "ratings.dat line 4: UserID 1 rates MovieID 2 again"),
    ("ratings", [*lines(RATINGS[:3]), "", "1::5::3::978300760"], "ratings.dat line 4: empty line"),
    ("users", [*lines(USERS[:2]), "3::X::25::15::55117"], "users.dat line 3: Gender 'X'; expected M or F"),
    ("users", [*lines(USERS[:2]), "3::M::26::15::55117"], "line 3: Age '26'; expected one of the codes"),
    ("users", [*lines(USERS[:2]), "3::M::25::21::55117"], "users.dat line 3: Occupation 21; expected"),
    ("users", [*lines(USERS[:2]), "6041::M::25::1::55117"], "line 3: UserID 6041; expected an integer in 1..6040"),
    ("users", [*lines(USERS[:2]), "2::M::25::1::55117"], "users.dat line 3: UserID 2 is listed again"),
    ("movies", [*lines(MOVIES[:2]), "3::Heat (1995)::Action|Thriler"], "movies.dat line 3: genre 'Thriler'"),
    ("movies", [*lines(MOVIES[:2]), "3::Heat (1995)"], "movies.dat line 3: expected 3 fields"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "message"), BAD)
def test_malformed_lines_are_one_error_line(root: Path, name: str, content: list[str], message: str) -> None:
    write_movielens(root, **{name: content})
    with pytest.raises(ValueError, match=message.replace("+", "\\+").replace("|", "\\|")) as error:
        settings.get("movielens")
    assert "\n" not in str(error.value) and str(root / "ml-1m" / f"{name}.dat") in str(error.value)


def test_bad_encoding_is_one_error_line(root: Path) -> None:
    path = root / "ml-1m" / "movies.dat"
    original = path.read_bytes()
    assert "Cité".encode("latin-1") in original
    path.write_bytes(original.decode("latin-1").encode("utf-8"))  # re-saved as UTF-8
    with pytest.raises(ValueError, match=r"movies.dat line 4: UTF-8 encoded text; expected Latin-1"):
        settings.get("movielens")
    path.write_bytes(original.replace("Cité".encode("latin-1"), "Citü Ā".encode()))  # continuation bytes 0xbc, 0x80
    with pytest.raises(ValueError, match=r"movies.dat line 4: UTF-8 encoded text; expected Latin-1"):
        settings.get("movielens")
    path.write_bytes(original.replace(b"Jumanji", b"Juma\x92nji"))  # Windows-1252's apostrophe
    with pytest.raises(ValueError, match=r"movies.dat line 2: control byte 0x92; expected Latin-1 text"):
        settings.get("movielens")
    path.write_bytes(original.replace(b"Jumanji", b"Juma\x00nji"))
    with pytest.raises(ValueError, match=r"movies.dat line 2: control byte 0x00; expected Latin-1 text"):
        settings.get("movielens")
    path.write_bytes(original)
    assert source.read_movies(path).titles[3] == "Cité des enfants perdus, La (1995)"


def test_the_encoder_embeds_every_feature_and_drops_out_in_training_only(root: Path) -> None:
    setting = settings.get("movielens", **SMALL)
    model = build_model(setting, {"name": "movielens"}, {"name": "linear"}, seed=0)
    encoder = model.encoder
    assert encoder.output_dim == 10 and [m.out_features for m in encoder.layers if hasattr(m, "out_features")] == [
        50,
        10,
    ]
    assert [m.p for m in encoder.layers if isinstance(m, torch.nn.Dropout)] == [0.05, 0.01]
    inputs = setting.tasks[0].train.inputs[:6]
    features = encoder.features(inputs)
    assert features.shape == (6, 40 + 5 + 10 + 20 + 20 + 40 + 20 + 20)
    # the user embedding is row `user id` of its table; the genre part is the mean of the listed genres' rows
    torch.testing.assert_close(features[:, :40], encoder.embeddings["user"].weight[inputs[:, 0].long()])
    genres = inputs[:, 7:]
    expected = torch.stack([encoder.genre[row.bool()].mean(dim=0) for row in genres])
    torch.testing.assert_close(features[:, -20:], expected)
    with probe_mode(model):  # dropout off: deterministic
        assert torch.equal(model(inputs, "watch"), model(inputs, "watch"))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model.encoder(inputs), model.encoder(inputs))  # dropout on in training
    with pytest.raises(ValueError, match="encoder 'movielens' needs the movielens setting's inputs"):
        mtlscope.models.encoders.ENCODERS.build("movielens", (24,))
    with pytest.raises(ValueError, match="unknown feature 'uid'"):
        mtlscope.models.encoders.ENCODERS.build("movielens", (25,), embedding_dims={"uid": 8})


def test_short_training_run_with_every_probe(root: Path, tmp_path: Path) -> None:
    config = {
        "setting": {"name": "movielens", "options": SMALL},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"steps": 4, "eval_every": 2, "batch_size": 6},
        "probes": {
            "min_train_loss": {},
            "sharpness": {"subset": 6, "iterations": 2, "batch_size": 3, "every": 1},
            "fim_trace": {"subset": 6, "every": 1},
            "grad_similarity": {"batches": 1, "every": 1},
            "grad_cov_trace": {"subset": 6, "small_batch": 3, "large_batch": 6, "every": 1},
            "affinity": {"every_steps": 2},
        },
        "seed": 0,
    }
    first = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "a")
    second = mtlscope.execute(mtlscope.validate_config(config), tmp_path / "b")
    assert first.status == second.status == "completed"
    records = mtlscope.load(first.path.parent).records
    assert {"accuracy", "auc", "rmse", "mae", "rounded_accuracy", "loss"} <= set(records["metric"])
    probed = records[records["split"] == "probe"]
    assert {"sharpness", "fim_trace", "fim_empirical"} <= set(probed["metric"])
    assert any(metric.startswith("affinity") for metric in probed["metric"])
    fim = probed[probed["metric"] == "fim_empirical"].groupby("task")["value"].first()
    assert fim["rating"] == 1.0 and fim["watch"] == 0.0
    again = mtlscope.load(second.path.parent).records
    cols = [c for c in records.columns if c != "run_id" and "time" not in c and "elapsed" not in c]
    pd.testing.assert_frame_equal(records[cols].reset_index(drop=True), again[cols].reset_index(drop=True))


def test_the_catalog_entry_names_the_official_archive() -> None:
    from mtlscope.data.catalog import dataset_info

    info = dataset_info("movielens-1m")
    assert info.downloadable and [entry.paths[0] for entry in info.files] == [
        "ml-1m/ratings.dat",
        "ml-1m/users.dat",
        "ml-1m/movies.dat",
    ]
    archive = info.archive("release")
    assert archive.url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip" and archive.format == "zip"
    assert archive.md5 == "c4d9eecfca2ab87c1945afe126590906" and archive.into == ""
