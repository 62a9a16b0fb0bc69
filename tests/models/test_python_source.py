"""The python_source dataset: next-character windows of this Python's own standard library."""

import os
from pathlib import Path

import numpy as np
import pytest

from edgepress.errors import EdgepressError
from edgepress.models.datasets import (
    PYTHON_SOURCE_VOCAB,
    PYTHON_SOURCE_WINDOW,
    decode_ids,
    encode_text,
    fit_to_input,
    load_dataset,
    python_source_dir,
)


def test_windows_come_from_the_interpreters_own_library():
    assert (python_source_dir() / "os.py").samefile(os.__file__)
    data = load_dataset("python_source", train_size=500, test_size=100)

    assert data.x_train.shape == (500, PYTHON_SOURCE_WINDOW) and data.y_train.shape == (500, PYTHON_SOURCE_WINDOW)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.num_classes == len(PYTHON_SOURCE_VOCAB) + 1  # the fixed vocabulary, whatever the text holds
    # y is x shifted by one character: each label is the character after its input.
    np.testing.assert_array_equal(data.x_train[:, 1:], data.y_train[:, :-1])
    np.testing.assert_array_equal(data.x_train[1:, 0], data.y_train[:-1, -1])
    # The first window is the start of the first file in name order.
    first = sorted(python_source_dir().glob("*.py"))[0].read_text(encoding="utf-8")
    assert decode_ids(data.x_train[0]) == first[:PYTHON_SOURCE_WINDOW]


def test_loading_is_deterministic_and_splits_train_first_test_last():
    a = load_dataset("python_source", train_size=50, test_size=20)
    b = load_dataset("python_source", train_size=80, test_size=20)
    np.testing.assert_array_equal(a.x_train, b.x_train[:50])
    np.testing.assert_array_equal(a.x_test, b.x_test)


def test_a_folder_of_py_files_and_characters_outside_the_vocabulary(tmp_path):
    (tmp_path / "b.py").write_text("x = 'é'\n" * 20)
    (tmp_path / "a.py").write_text("print(1)\n" * 20)
    data = load_dataset("python_source", tmp_path, train_size=2, test_size=1)
    assert decode_ids(data.x_train[0]).startswith("print(1)\nprint(1)")  # a.py comes first
    assert encode_text("é")[0] == 0 and decode_ids([0]) == "\ufffd"
    assert decode_ids(encode_text("def f():\n\treturn 1")) == "def f():\n\ufffdreturn 1"


def test_a_folder_without_python_files_is_refused(tmp_path):
    with pytest.raises(EdgepressError, match="No .py files"):
        load_dataset("python_source", Path(tmp_path), train_size=1, test_size=1)


def test_gray_images_fit_a_channels_first_model():
    images = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    fitted = fit_to_input(images, (3, 32, 32))
    assert fitted.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(fitted[:, 0], fitted[:, 2])  # the gray channel, repeated
    assert abs(float(fitted.mean()) - float(images.mean())) < 0.01
