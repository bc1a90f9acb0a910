import numpy as np
import pytest

from bench.data import DataError, load_csv_folder, resolve_data_dir, stratified_indices
from bench.datasets_builtin import SST2


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
