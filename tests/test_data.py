"""flax_lstm.data: bundled data sets and the .ts / .npz readers, including every bad input."""

from __future__ import annotations

import numpy as np
import pytest

from flax_lstm import data as fdata
from flax_lstm.data import DataError, SequenceDataset, read_dataset, read_npz, read_ts, write_ts

HEADER = "@problemName demo\n@timeStamps false\n@univariate false\n@dimensions 2\n"


def _write(tmp_path, text: str, name: str = "d.ts"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- bundled


def test_japanese_vowels_bundled():
    train, test = fdata.load_japanese_vowels()
    assert (len(train), len(test)) == (270, 370)
    assert train.num_channels == test.num_channels == 12
    assert train.x.dtype == np.float32 and train.x.shape == (270, 26, 12)
    assert test.x.shape == (370, 29, 12)
    lengths = np.concatenate([train.lengths, test.lengths])
    assert lengths.min() == 7 and lengths.max() == 29
    labels, counts = np.unique(train.y, return_counts=True)
    assert labels.tolist() == [str(i) for i in range(1, 10)] and (counts == 30).all()
    assert sorted(set(test.y.tolist())) == labels.tolist()
    assert train.class_names == tuple(labels.tolist())
    for ds in (train, test):  # zero past each length, real values inside
        t = np.arange(ds.max_length)[None, :, None]
        assert (ds.x[np.broadcast_to(t >= ds.lengths[:, None, None], ds.x.shape)] == 0).all()
        assert np.isfinite(ds.x).all()
        assert (np.abs(ds.x[np.arange(len(ds)), ds.lengths - 1]).sum(axis=1) > 0).all()
    # First value of the first training series in JapaneseVowels_TRAIN.ts.
    assert train.x[0, 0, 0] == np.float32(1.860936)


def test_sunspots_bundled():
    year, activity = fdata.load_sunspots()
    assert year.shape == activity.shape == (309,)
    assert year[0] == 1700 and year[-1] == 2008 and (np.diff(year) == 1).all()
    assert activity.dtype == np.float64 and (activity >= 0).all()
    assert activity[0] == 5.0 and activity[-1] == 2.9


# --------------------------------------------------------------------------------- .ts


def test_read_ts_variable_length_string_labels(tmp_path):
    text = (
        "# a comment\n% another\n" + HEADER + "@equalLength false\n"
        "@classLabel true walk run\n@data\n"
        "1,2,3:4,5,6:walk\n"
        "7,8:9,10:run\n"
        "\n"
        "0.5,?,1.5,2,2.5:1,1,1,1,1:walk\n"
    )
    ds = read_ts(_write(tmp_path, text))
    assert ds.x.shape == (3, 5, 2)
    assert ds.lengths.tolist() == [3, 2, 5]
    assert ds.y.tolist() == ["walk", "run", "walk"]
    assert ds.class_names == ("walk", "run")
    np.testing.assert_array_equal(ds.x[0, :, 1], [4, 5, 6, 0, 0])
    np.testing.assert_array_equal(ds.x[1, :2, 0], [7, 8])
    assert np.isnan(ds.x[2, 1, 0]) and not np.isnan(ds.x[2, 0, 0])


def test_read_ts_univariate_equal_length_lowercase_header_numeric_labels(tmp_path):
    text = (
        "@problemname uni\n@timestamps false\n@univariate true\n@equallength true\n"
        "@serieslength 4\n@classlabel true 0.0 1.0 2.0\n@data\n"
        "1,2,3,4:1.0\n4,3,2,1:0.0\n1e-3,-2.5E2,3,0:2.0\n"
    )
    ds = read_ts(_write(tmp_path, text))
    assert ds.x.shape == (3, 4, 1) and ds.lengths.tolist() == [4, 4, 4]
    assert ds.y.tolist() == ["1", "0", "2"]  # canonical: 1.0 → "1"
    assert ds.x[2, 1, 0] == np.float32(-250.0)


def test_read_ts_trailing_missing_values_shorten_the_series(tmp_path):
    text = HEADER + "@classLabel true a b\n@data\n1,2,?,?:3,4,?,?:a\n1,2,3,4:1,?,3,?:b\n"
    ds = read_ts(_write(tmp_path, text))
    assert ds.lengths.tolist() == [2, 4]


def test_write_ts_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 1, 9)]
    series[2][4, 1] = np.nan
    ds = SequenceDataset.from_series(series, ["x", "y", "x"])
    write_ts(tmp_path / "r.ts", ds)
    back = read_ts(tmp_path / "r.ts")
    np.testing.assert_array_equal(back.x, ds.x)  # NaN == NaN for assert_array_equal
    assert back.lengths.tolist() == [5, 1, 9] and back.y.tolist() == ["x", "y", "x"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("@classLabel true a b\n@data\n1,2:3,4:a\n1,2:b\n", "inconsistent dimensions"),
        ("@classLabel true a b\n@data\n1,2,3:3,4,5:6,7,8:a\n", "declares 2"),
        ("@classLabel true a b\n@data\n1,2,3:3,4:a\n", "different lengths"),
        ("@classLabel true a b\n@data\n1,2:3,x:a\n", "cannot read 'x' as a number"),
        ("@classLabel true a b\n@data\n1,2:3,4:c\n", "not among the declared class labels"),
        ("@classLabel true a b\n@data\n1,2:3,4\n", r"labels \['3,4'\] are not among"),
        ("@classLabel true a b\n@data\n1,2;3,4\n", "no ':'-separated class label"),
        ("@classLabel true a b\n@data\n1,2:3,4: \n", "empty class label"),
        ("@classLabel true a b\n@data\n?,?:?,?:a\n", "only missing values"),
        ("@classLabel true a b\n@data\n1,2:3,inf:a\n", "infinite"),
        ("@classLabel true a b\n@data\n", "no cases"),
        ("@classLabel true a b\n1,2:3,4:a\n", "expected a @header line"),
        ("@classLabel true a b\n", "no @data line"),
        ("@data\n1,2:3,4:a\n", "no '@classLabel true <labels>'"),
        ("@classLabel false\n@data\n1,2:3,4\n", "no class labels"),
        ("@classLabel true\n@data\n1,2:3,4:a\n", "must list the class labels"),
        ("@targetLabel true\n@data\n1,2:3,4:0.5\n", "regression"),
        ("@timeStamps true\n@classLabel true a\n@data\n(1,2):a\n", "timestamped"),
        ("@missing maybe\n@data\n", "true or false"),
        ("@equalLength true\n@seriesLength 3\n@classLabel true a\n@data\n1,2:3,4:a\n", "length 2"),
        ("@dimensions two\n@data\n", "needs an integer"),
    ],
)
def test_read_ts_malformed(tmp_path, body, message):
    path = _write(tmp_path, HEADER.replace("@dimensions 2\n", "") + body)
    if "@dimensions" not in body and "declares 2" in message:
        path = _write(tmp_path, HEADER + body)
    with pytest.raises(DataError, match=message) as info:
        read_ts(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text


def test_read_ts_univariate_header_rejects_several_dimensions(tmp_path):
    text = "@univariate true\n@classLabel true a\n@data\n1,2:3,4:a\n"
    with pytest.raises(DataError, match="inconsistent dimensions"):
        read_ts(_write(tmp_path, text))


def test_read_ts_missing_binary_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_ts(tmp_path / "missing.ts")
    (tmp_path / "bin.ts").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match="not a text file"):
        read_ts(tmp_path / "bin.ts")
    (tmp_path / "dir.ts").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_ts(tmp_path / "dir.ts")


# -------------------------------------------------------------------------------- .npz


def test_read_npz_with_lengths_and_string_labels(tmp_path):
    x = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3) + 1
    np.savez(tmp_path / "d.npz", x=x, y=np.array(["cat", "dog"]), lengths=np.array([4, 2]))
    ds = read_npz(tmp_path / "d.npz")
    assert ds.x.dtype == np.float32 and ds.x.shape == (2, 4, 3)
    assert ds.lengths.tolist() == [4, 2] and ds.y.tolist() == ["cat", "dog"]
    assert (ds.x[1, 2:] == 0).all() and (ds.x[1, :2] == x[1, :2]).all()


def test_read_npz_univariate_numeric_labels_nan_padding(tmp_path):
    x = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, 5.0]])
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1.0, 2.0]))
    ds = read_dataset(tmp_path / "d.npz")
    assert ds.x.shape == (2, 3, 1) and ds.lengths.tolist() == [2, 3]
    assert ds.y.tolist() == ["1", "2"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.ones((2, 3, 1))}, r"missing array\(s\) \['y'\]"),
        ({"y": np.ones(2)}, r"missing array\(s\) \['x'\]"),
        ({"x": np.ones((2, 3, 1, 1)), "y": np.ones(2)}, "x must be a numeric array"),
        ({"x": np.array([["a"]]), "y": np.ones(1)}, "x must be a numeric array"),
        ({"x": np.ones((2, 3)), "y": np.ones(3)}, r"y must have shape \(2,\)"),
        ({"x": np.ones((2, 3)), "y": np.ones(2), "lengths": [1, 4]}, r"lengths must lie in"),
        ({"x": np.ones((2, 3)), "y": np.ones(2), "lengths": [1.0, 2]}, "lengths must be integers"),
        ({"x": np.ones((0, 3)), "y": np.ones(0)}, "x is empty"),
        ({"x": np.ones((2, 3)), "y": np.array([{}, {}], dtype=object)}, "not Python objects"),
    ],
)
def test_read_npz_malformed(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        read_npz(path)
    assert "\n" not in str(info.value)


def test_read_npz_missing_and_not_npz(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_npz(tmp_path / "missing.npz")
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"not a valid \.npz"):
        read_npz(tmp_path / "fake.npz")


def test_read_dataset_dispatch(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_dataset(tmp_path / "nothing.csv")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"expected \.ts or \.npz"):
        read_dataset(tmp_path / "data.csv")
    with pytest.raises(DataError, match="no such file"):
        read_dataset(tmp_path / "nothing.TS")


def test_canonical_label():
    assert [fdata.canonical_label(v) for v in (1, "1.0", " 01 ", 2.5, "a b", b"x")] == [
        "1",
        "1",
        "1",
        "2.5",
        "a b",
        "x",
    ]


def test_from_series_errors():
    with pytest.raises(DataError, match="different numbers of channels"):
        SequenceDataset.from_series([np.ones((2, 2)), np.ones((2, 3))], ["a", "b"])
    with pytest.raises(DataError, match="2 series but 1 labels"):
        SequenceDataset.from_series([np.ones((2, 2)), np.ones((2, 2))], ["a"])
