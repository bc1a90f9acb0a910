import warnings

import numpy as np
import pytest

from bench.data import DataError, load_csv_folder, resolve_data_dir, stratified_indices
from bench.data.datasets_builtin import SST2, HSOL, AGNews


def _write(folder, train="text,label\na,0\nb,1\n", dev="text,label\nc,0\n", test="text,label\nd,1\n"):
    folder.mkdir(exist_ok=True)
    for name, body in (("train", train), ("dev", dev), ("test", test)):
        if body is not None:
            (folder / f"{name}.csv").write_text(body)
    return folder


def test_loads_a_user_csv_folder(tmp_path):
    data = load_csv_folder(_write(tmp_path / "d"))
    assert data.num_labels == 2 and len(data.train) == 2 and data.train[0] == {"text": "a", "label": 0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dev": None}, "dev.csv: file is missing"),
        ({"train": "sentence,label\na,0\n"}, "train.csv: missing column(s) text"),
        ({"test": "text,label\nd,positive\n"}, "test.csv: row 2 has label 'positive', which is not an integer"),
        ({"dev": "text,label\nc,1.5\n"}, "dev.csv: row 2 has label"),
        ({"test": "text,label\nd,7\n"}, "test.csv: row 2 has label 7, out of range for 2 classes"),
        ({"test": "text,label\nd,-1\n"}, "out of range"),
        ({"dev": "text,label\n"}, "dev.csv: the split is empty"),
    ],
)
def test_bad_data_names_the_file_and_the_problem(tmp_path, kwargs, message):
    folder = _write(tmp_path / "d", **kwargs)
    with pytest.raises(DataError) as e:
        load_csv_folder(folder)
    assert message in str(e.value)


def test_fingerprint_follows_content_not_name(tmp_path):
    a = load_csv_folder(_write(tmp_path / "a"))
    b = load_csv_folder(_write(tmp_path / "b"))
    c = load_csv_folder(_write(tmp_path / "a2", train="text,label\na,0\nb,0\nz,1\n"))
    assert a.fingerprint == load_csv_folder(tmp_path / "a").fingerprint
    assert a.fingerprint != c.fingerprint
    assert b.name == "b"


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / ".") == tmp_path / "."
    with pytest.raises(DataError, match="--data-dir PATH or set BENCH_DATA_DIR"):
        resolve_data_dir(tmp_path / "nope")


def test_benchmark_dataset_loads(shared_data):
    data = SST2().load(shared_data)
    assert (len(data.train), len(data.dev), len(data.test)) == (6920, 872, 1821)
    assert data.num_labels == 2 and data.default_target == 1


def test_stratified_indices_keep_proportions_and_seed():
    labels = np.array([0] * 70 + [1] * 30)
    idx = stratified_indices(labels, 10, seed=3)
    assert len(idx) == 10 and (labels[idx] == 1).sum() == 3
    assert np.array_equal(idx, stratified_indices(labels, 10, seed=3))
    assert not np.array_equal(idx, stratified_indices(labels, 10, seed=4))
    assert len(stratified_indices(labels, 1000, seed=3)) == 100


# --- issue 23: no silent wrong data -----------------------------------------------------------------

def _texts(labels, word="w"):
    return "text,label\n" + "".join(f"{word} {i},{lab}\n" for i, lab in enumerate(labels))


def _load_error(folder, **kwargs):
    with pytest.raises(DataError) as e:
        load_csv_folder(folder, **kwargs)
    return str(e.value)


def test_a_clean_folder_loads_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_csv_folder(_write(tmp_path / "d"))
    assert data.extra["skipped_rows"] == {"train": 0, "dev": 0, "test": 0}


@pytest.mark.parametrize("header, column", [("text,text,label", "'text'"), ("text,label,label", "'label'")])
def test_a_repeated_column_name_is_an_error(tmp_path, header, column):
    folder = _write(tmp_path / "d", train=f"{header}\na,b,0\nc,d,1\n")
    message = _load_error(folder)
    assert "train.csv" in message and column in message and "rename or drop" in message


def test_a_stray_label_is_an_error_naming_its_row_and_the_classes(tmp_path):
    folder = _write(tmp_path / "d", train=_texts([0, 1, 0, 1, 0, 7]))
    message = _load_error(folder)
    assert "train.csv: no training row has class 2, 3, 4, 5, 6" in message
    assert "row 7 has label 7; classes present: 0 (3 rows), 1 (2 rows), 7 (1 row)" in message
    assert "Renumber the labels 0..K-1" in message


def test_labels_numbered_from_1_are_an_error(tmp_path):
    folder = _write(tmp_path / "d", train=_texts([1, 2, 1, 2, 2]), dev="text,label\nc,1\n", test="text,label\nd,2\n")
    message = _load_error(folder)
    assert "no training row has class 0" in message and "classes present: 1 (2 rows), 2 (3 rows)" in message
    assert "row 2 has label 1" in message and "Renumber" in message


def test_a_class_in_dev_but_not_in_train_is_an_error(tmp_path):
    folder = _write(tmp_path / "d", train=_texts([0, 2, 0, 2]), dev="text,label\nc,1\n")
    assert "no training row has class 1" in _load_error(folder)


def test_a_declared_class_missing_from_train_is_an_error(tmp_path):
    folder = _write(tmp_path / "d", train=_texts([0, 1, 2]), dev="text,label\nc,0\n", test="text,label\nd,3\n")
    message = _load_error(folder, num_labels=4)
    assert "train.csv: no training row has class 3" in message and "classes present: 0 (1 row)" in message


def test_empty_texts_are_skipped_counted_and_reported(tmp_path):
    train = 'text,label\na,0\n,1\n   ,0\nnan,1\nNaN,0\nNone,1\nnull,0\nb,1\n"  ",0\n'
    folder = _write(tmp_path / "d", train=train, test="text,label\nd,1\nNULL,0\n")
    with pytest.warns(UserWarning) as caught:
        data = load_csv_folder(folder)
    messages = [str(w.message) for w in caught]
    assert any("train.csv: skipped 7 row(s)" in m and "row(s) 3, 4, 5, 6, 7, ..." in m for m in messages)
    assert any("test.csv: skipped 1 row(s)" in m and "row(s) 3;" in m for m in messages)
    assert data.train["text"] == ["a", "b"] and data.test["text"] == ["d"]
    assert data.extra["skipped_rows"] == {"train": 7, "dev": 0, "test": 1}


def test_row_numbers_count_the_skipped_rows(tmp_path):
    folder = _write(tmp_path / "d", train="text,label\n,0\na,0\nb,1\nc,5\n")
    with pytest.warns(UserWarning, match="skipped 1 row"):
        assert "train.csv: row 5 has label 5, out of range" in _load_error(folder, num_labels=2)


def test_a_split_with_only_empty_texts_is_an_error(tmp_path):
    folder = _write(tmp_path / "d", dev="text,label\n,0\nnan,1\n")
    assert "dev.csv: every row has an empty text" in _load_error(folder)


@pytest.mark.parametrize("split, body", [("test", "text,label\na,0\nb,1\n"), ("test", "text,label\nb,1\n"),
                                         ("dev", "text,label\na,0\nb,1\n")])
def test_a_dev_or_test_split_made_of_training_texts_is_an_error(tmp_path, split, body):
    message = _load_error(_write(tmp_path / "d", **{split: body}))
    assert f"{split}.csv: every {split} text also appears in" in message and "train.csv" in message
    assert "held out from training" in message


def test_a_partial_overlap_is_one_warning_per_split(tmp_path):
    folder = _write(tmp_path / "d", dev="text,label\na,0\nc,0\n", test="text,label\nb,1\nb,1\nd,1\ne,0\n")
    with pytest.warns(UserWarning) as caught:
        load_csv_folder(folder)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "dev.csv: 1 of 2 rows (50.00%; 1 distinct) also appear in" in messages[0]
    assert "test.csv: 2 of 4 rows (50.00%; 1 distinct) also appear in" in messages[1]


@pytest.mark.parametrize("dataset, sizes", [(SST2, (6920, 872, 1821)), (HSOL, (5241, 582, 2485)),
                                            (AGNews, (11106, 10000, 7600))])
def test_benchmark_data_has_no_skipped_rows_and_small_overlaps_only_warn(shared_data, dataset, sizes):
    with pytest.warns(UserWarning, match="also appear in"):
        data = dataset().load(shared_data)
    assert (len(data.train), len(data.dev), len(data.test)) == sizes
    assert data.extra["skipped_rows"] == {"train": 0, "dev": 0, "test": 0}
