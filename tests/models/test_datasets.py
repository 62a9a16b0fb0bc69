import gzip

import numpy as np
import pytest

from edgepress.errors import EdgepressError
from edgepress.models.datasets import fit_to_input, load_dataset
from tests.conftest import MNIST


def _idx_labels(path):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=8)


def test_mnist_idx_split_takes_first_train_and_last_test():
    data = load_dataset("mnist", MNIST, train_size=8000, test_size=2000)
    labels = _idx_labels(MNIST / "t10k-labels-idx1-ubyte.gz")

    assert data.x_train.shape == (8000, 28, 28) and data.x_test.shape == (2000, 28, 28)
    np.testing.assert_array_equal(data.y_train, labels[:8000])
    np.testing.assert_array_equal(data.y_test, labels[-2000:])
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert data.num_classes == 10


def test_mnist_keras_npz_matches_idx(tmp_path):
    idx = load_dataset("mnist", MNIST, train_size=100, test_size=50)
    raw = (idx.x_train * 255).round().astype(np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=raw[:60], y_train=idx.y_train[:60],
             x_test=raw[60:], y_test=idx.y_train[60:])

    data = load_dataset("mnist", tmp_path / "mnist.npz", train_size=60, test_size=40)

    np.testing.assert_allclose(data.x_train, idx.x_train[:60], atol=1e-6)
    np.testing.assert_array_equal(data.y_test, idx.y_train[60:])


def test_digits_fit_to_cnn_and_mlp_inputs():
    data = load_dataset("digits", test_size=100)
    cnn, mlp = data.fit_to((28, 28, 1)), data.fit_to((784,))

    assert data.x_train.shape[1:] == (8, 8) and len(data.x_test) == 100
    assert cnn.x_test.shape == (100, 28, 28, 1) and mlp.x_test.shape == (100, 784)
    np.testing.assert_allclose(cnn.x_test.reshape(100, -1), mlp.x_test, atol=1e-6)
    assert 0.9 < cnn.x_test.max() <= 1.0


def test_gray_digits_fit_a_channels_last_rgb_model():
    data = load_dataset("digits", test_size=20).fit_to((32, 32, 3))  # keras.applications' layout (MobileNetV2)
    x = data.x_test
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # the gray channel, repeated
    assert 0.5 < x.max() <= 1.0


def test_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((50, 28, 28)), y=rng.integers(0, 3, 50))

    data = load_dataset("npz", tmp_path / "d.npz", train_size=40)

    assert len(data.x_train) == 40 and len(data.x_test) == 10 and data.x_train.dtype == np.float32


@pytest.mark.parametrize(
    "arrays, message",
    [({"x": np.zeros((5, 4))}, "missing: y"), ({"x": np.zeros((5, 4)), "y": np.zeros(4)}, "has 4")],
)
def test_user_npz_bad_content(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(EdgepressError, match=message):
        load_dataset("npz", tmp_path / "d.npz")


def test_data_that_does_not_fit_the_model_names_both_shapes():
    with pytest.raises(EdgepressError, match=r"\(5\).*\(28, 28, 1\)"):
        fit_to_input(np.zeros((3, 5), np.float32), (28, 28, 1), "mine")


def test_empty_calibration_set_is_refused():
    data = load_dataset("digits", train_size=0, test_size=10)
    with pytest.raises(EdgepressError, match="calibration set is empty"):
        data.calibration(100)


def test_missing_mnist_directory(tmp_path):
    with pytest.raises(EdgepressError, match="No MNIST idx files"):
        load_dataset("mnist", tmp_path)


def test_corrupt_idx_file(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"garbage"))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"garbage"))
    with pytest.raises(EdgepressError, match="not a readable MNIST idx file"):
        load_dataset("mnist", tmp_path)
