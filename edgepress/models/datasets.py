"""Datasets: where the training, test and calibration samples come from.

Four sources, all local: `digits` (scikit-learn's 8x8 digits, shipped with the package),
`mnist` (a directory of idx files, `.gz` or not, or a keras `mnist.npz`), `npz` (a user's
file with `x` and `y` arrays), and `python_source` (next-character windows of the running
Python's own standard-library source, for the character language model). Every image is scaled to
[0, 1] and fitted to the model's input shape by `fit_to_input`, so the same data serves a CNN
(28x28x1), an MLP (784), an LSTM reading rows (28, 28) and a channels-first PyTorch CNN (3, 32, 32).
"""

from __future__ import annotations

import gzip
import os
import struct
import sysconfig
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepress.errors import EdgepressError
from edgepress.limits import MAX_ARRAY_BYTES, MAX_DATA_FILE_BYTES, check_array, memory_cap, regular_file

# The most classes a label may name (a large vocabulary's worth): a label of 1e9 is a mistake, not a class.
MAX_CLASSES = 1 << 20


@dataclass
class Dataset:
    """Train and test splits, as float32 inputs and integer labels (one per sample, or one per time step)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int | None = None  # a fixed number of classes (a vocabulary); default: the largest label + 1

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return self.classes
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    def calibration(self, n: int) -> np.ndarray:
        """The first `n` training inputs: what post-training quantization calibrates on."""
        if n < 1 or len(self.x_train) == 0:
            raise EdgepressError(
                f"The calibration set is empty (asked for {n} samples from {len(self.x_train)} training "
                f"samples of '{self.name}'). Full-integer quantization needs real samples to measure "
                "activation ranges: set data.calibration_samples to 1 or more and give data with a train split."
            )
        return self.x_train[:n]

    def fit_to(self, input_shape: tuple[int | None, ...]) -> Dataset:
        """This dataset with inputs reshaped or resized to a model's input shape (batch dim excluded)."""
        return Dataset(
            self.name,
            fit_to_input(self.x_train, input_shape, self.name),
            self.y_train,
            fit_to_input(self.x_test, input_shape, self.name),
            self.y_test,
            self.classes,
        )


def load_dataset(
    name: str,
    path: str | Path | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load `digits`, `mnist`, `npz` or `python_source` data and split it into train and test.

    Splits are taken in file order (train first, test last) so results are reproducible: for MNIST's
    10,000-image test set, train_size=8000 and test_size=2000 give the first 8,000 and the last 2,000.
    `digits` is shuffled once with `seed` because scikit-learn orders it by writer. `python_source`
    reads the .py files of `path` (default: this Python's standard library), see `load_python_source`.
    """
    if name == "digits":
        x, y = _load_digits(seed)
    elif name == "mnist":
        if path is None:
            raise EdgepressError(
                "The 'mnist' dataset needs a path: a directory with the idx files "
                "(t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, or the train-* pair) or a keras "
                "mnist.npz file. Set data.path in the recipe or pass --data PATH."
            )
        x, y = _load_mnist(Path(path))
    elif name == "npz":
        if path is None:
            raise EdgepressError("The 'npz' dataset needs a path to a .npz file with 'x' and 'y' arrays.")
        x, y = read_npz(Path(path))
    elif name == "python_source":
        x, y = load_python_source(path)
        return _split(name, x, y, train_size, test_size, classes=len(PYTHON_SOURCE_VOCAB) + 1)
    else:
        raise EdgepressError(f"Unknown dataset '{name}'. Use one of: digits, mnist, npz, python_source.")
    return _split(name, x, y, train_size, test_size)


def fit_to_input(x: np.ndarray, input_shape: tuple[int | None, ...], dataset: str = "data") -> np.ndarray:
    """Reshape or resize images `x` (N, H, W[, C]) or vectors (N, D) to `input_shape` (no batch dim)."""
    target = tuple(input_shape)
    if None in target:
        raise EdgepressError(
            f"The model's input shape {_shape(target)} has unknown dimensions; edgepress needs a fixed "
            "input shape to fit the data to it. Build the model with a fixed Input shape."
        )
    sample = x.shape[1:]
    if sample == target:
        return x.astype(np.float32, copy=False)
    if int(np.prod(sample)) == int(np.prod(target)):
        # (28, 28) -> (28, 28, 1) or (784,): same pixels, other layout.
        return x.reshape((len(x), *target)).astype(np.float32, copy=False)
    if len(sample) in (2, 3) and len(target) in (2, 3) and _channels(sample) == _channels(target):
        # Images of another size (digits are 8x8): resize to the model's height and width.
        return _resize(x, target)
    side = int(round(target[0] ** 0.5)) if len(target) == 1 else 0
    if len(sample) in (2, 3) and _channels(sample) == 1 and side * side == target[0]:
        # Images for a model on flattened square images (an MLP on 784 values): resize, then flatten.
        return _resize(x, (side, side, 1)).reshape((len(x), *target))
    if len(sample) in (2, 3) and _channels(sample) == 1 and len(target) == 3 and target[0] in (1, 3) and target[1] > 3:
        # Gray images for a channels-first model (PyTorch's C, H, W): resize, repeat the gray channel
        # C times, then move channels first.
        resized = _resize(x, (target[1], target[2], 1))
        return np.ascontiguousarray(np.repeat(resized, target[0], axis=-1).transpose(0, 3, 1, 2))
    if len(sample) in (2, 3) and _channels(sample) == 1 and len(target) == 3 and target[2] == 3 and target[0] > 3:
        # Gray images for a channels-last RGB model (keras.applications, e.g. MobileNetV2): resize, repeat the
        # gray channel three times.
        return np.repeat(_resize(x, (target[0], target[1], 1)), 3, axis=-1)
    raise EdgepressError(
        f"The samples of '{dataset}' have shape {_shape(sample)}, which does not fit the model's input "
        f"{_shape(target)}. Give data with {_shape(target)} samples (or the same number of values), "
        "or images that can be resized to it."
    )


def _channels(shape: tuple) -> int:
    return shape[2] if len(shape) == 3 else 1


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _resize(x: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    from edgepress.compat import tensorflow

    tf = tensorflow()
    images = x.reshape((len(x), x.shape[1], x.shape[2], _channels(x.shape[1:]))).astype(np.float32)
    resized = tf.image.resize(images, target[:2], method="bilinear").numpy()
    return resized.reshape((len(x), *target)).astype(np.float32)


def _split(name, x, y, train_size, test_size, classes: int | None = None) -> Dataset:
    n = len(x)
    if test_size is None:
        test_size = n // 5 if train_size is None else n - train_size
    if train_size is None:
        train_size = n - test_size
    if train_size < 0 or test_size < 1 or train_size + test_size > n:
        raise EdgepressError(
            f"Dataset '{name}' has {n} samples; it cannot give train_size={train_size} and "
            f"test_size={test_size}. Their sum must be at most {n} and test_size at least 1."
        )
    return Dataset(name, x[:train_size], y[:train_size], x[n - test_size :], y[n - test_size :], classes)


def _load_digits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    x = (digits.images[order] / 16.0).astype(np.float32)
    return x, digits.target[order].astype(np.int64)


def _load_mnist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.is_file() and path.suffix == ".npz":
        regular_file(path, "The data file", MAX_DATA_FILE_BYTES)
        try:
            with np.load(path) as f:
                if not {"x_train", "y_train", "x_test", "y_test"} <= set(f.files):
                    raise EdgepressError(f"{path} is not a keras mnist.npz file (it needs x_train, y_train, x_test "
                                         f"and y_test; it has {', '.join(sorted(f.files)) or 'no arrays'}).")
                # The keras file holds both splits; edgepress splits the concatenation itself.
                parts = _npz_arrays(path, f, ["x_train", "x_test", "y_train", "y_test"])
                x, y = np.concatenate(parts[:2]), np.concatenate(parts[2:])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise EdgepressError(f"{path} is not a readable .npz file ({e}).") from None
        return checked_inputs(x, f"{path}: x") / np.float32(255), checked_labels(y, len(x), f"{path}: y")
    if not path.is_dir():
        raise EdgepressError(
            f"MNIST data not found at {path}: give a directory with idx files or a keras mnist.npz file."
        )
    images, labels = [], []
    for prefix in ("train", "t10k"):
        img = _find(path, f"{prefix}-images-idx3-ubyte")
        lab = _find(path, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            images.append(_read_idx(img))
            labels.append(_read_idx(lab))
            if images[-1].ndim < 2 or labels[-1].ndim != 1 or len(images[-1]) != len(labels[-1]):
                raise EdgepressError(
                    f"The MNIST files {img.name} and {lab.name} in {path} do not match: {images[-1].shape} images "
                    f"and {labels[-1].shape} labels (one label per image is needed). Download the pair again."
                )
    if not images:
        raise EdgepressError(
            f"No MNIST idx files in {path}: expected t10k-images-idx3-ubyte[.gz] and "
            "t10k-labels-idx1-ubyte[.gz] (and/or the train-* pair)."
        )
    x, y = np.concatenate(images), np.concatenate(labels)
    return x.astype(np.float32) / np.float32(255), y.astype(np.int64)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format: magic, dims as big-endian int32, then uint8 data).

    The dimensions its header declares are checked before the data is read (a small gzip file can declare and
    inflate to gigabytes), and the data must be exactly what they declare.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    regular_file(path, "The MNIST idx file", MAX_ARRAY_BYTES)
    try:
        with opener(path, "rb") as f:
            zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or dtype_code != 0x08:
                raise ValueError("not an unsigned-byte idx file")
            dims = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            check_array(dims, np.uint8, f"The MNIST idx file {path}")
            size = int(np.prod(dims, dtype=np.int64))
            data = f.read(size + 1)
        if len(data) != size:
            raise ValueError(f"its header declares {size:,} bytes of data, and it holds "
                             f"{'more' if len(data) > size else f'{len(data):,}'}")
        return np.frombuffer(data, dtype=np.uint8, count=size).reshape(dims)
    except (OSError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise EdgepressError(f"{path} is not a readable MNIST idx file ({e}). Re-download it.") from None


def _npz_arrays(path: Path, npz, names: list[str]) -> list[np.ndarray]:
    """The arrays `names` of the open .npz file `npz` (at `path`), each .npy header's declared shape checked before
    the array is read; a member that is not a .npy array is refused."""
    with zipfile.ZipFile(path) as archive:
        for name in names:
            member = f"{name}.npy"
            if member not in archive.namelist():
                raise EdgepressError(f"{path}: its entry '{name}' is not a .npy array (np.savez writes {name}.npy); "
                                     "save the data with np.savez(path, x=inputs, y=labels).")
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(stream)
            check_array(shape, dtype, f"{path}: '{name}'")
    arrays = [npz[name] for name in names]
    for name, array in zip(names, arrays, strict=True):
        if not isinstance(array, np.ndarray):
            raise EdgepressError(f"{path}: its entry '{name}' is not a numpy array; save the data with np.savez.")
    return arrays


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The checked `x` (float32 inputs) and `y` (int64 labels) arrays of a user's .npz file."""
    if not path.exists():
        raise EdgepressError(f"Data file {path} not found: give a .npz file with 'x' and 'y' arrays.")
    x, y = read_npz_arrays(path, ["x", "y"])
    # A user's arrays are used as given: they are already preprocessed the way their model expects.
    return checked_inputs(x, f"{path}: 'x'"), checked_labels(y, len(x), f"{path}: 'y'")


def read_npz_arrays(path: Path, names: list[str]) -> list[np.ndarray]:
    """The arrays `names` of the .npz file at `path` (a regular file; each array's declared size checked before it is
    read; pickled objects refused), as stored."""
    regular_file(path, "The data file", MAX_DATA_FILE_BYTES)
    try:
        with memory_cap(f"The data file {path}"), np.load(path) as f:
            missing = [k for k in names if k not in f]
            if missing:
                raise EdgepressError(
                    f"{path} has arrays {sorted(f.files)} but needs {', '.join(map(repr, names))}; missing: "
                    f"{', '.join(missing)}. Save the data with np.savez(path, x=inputs, y=labels)."
                )
            return _npz_arrays(path, f, names)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # also object (pickled) arrays: refused
        raise EdgepressError(f"{path} is not a readable .npz file ({e}).") from None


def checked_inputs(x: np.ndarray, what: str) -> np.ndarray:
    """`x` as float32 model inputs, refused (naming how) when it cannot be: not numbers, no sample axis, NaN, Inf."""
    if x.ndim == 0:
        raise EdgepressError(f"{what} is a single value (a 0-d array); give one row per sample, e.g. (N, 28, 28).")
    if np.iscomplexobj(x) or x.dtype.kind not in "biuf":
        raise EdgepressError(f"{what} holds {x.dtype} values; model inputs must be real numbers (float or integer).")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0][0])
        raise EdgepressError(f"{what} has {nan} NaN and {inf} infinite values (the first in sample {first}); "
                             "inputs must be finite numbers: clean or drop those samples.")
    return x


def checked_labels(y: np.ndarray, samples: int, what: str) -> np.ndarray:
    """`y` as int64 class labels, one per sample (or one per time step), refused when they are not such labels."""
    if y.ndim == 0 or len(y) != samples:
        count = 0 if y.ndim == 0 else len(y)
        raise EdgepressError(f"{what} has {count} labels for {samples} samples; they must match.")
    if np.iscomplexobj(y) or y.dtype.kind not in "biuf":
        raise EdgepressError(f"{what} holds {y.dtype} values; labels must be integer class indices 0, 1, 2, ...")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
        sample = y[np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0]] if y.ndim == 1 else "fractions"
        raise EdgepressError(f"{what} holds fractional values (e.g. {sample}); labels must be integer class "
                             "indices 0, 1, 2, ... (for probabilities or one-hot rows, give their argmax).")
    if (y < 0).any():
        raise EdgepressError(f"{what} has negative labels (e.g. {int(y.min())}); labels must be class indices 0, 1, "
                             "2, ... (relabel, or drop unlabelled samples).")
    if y.size and y.max() >= MAX_CLASSES:
        raise EdgepressError(f"{what} has a label of {y.max():g}; labels are class indices 0, 1, 2, ..., and "
                             f"edgepress handles at most {MAX_CLASSES:,} classes. Relabel the data as 0..N-1.")
    return y.astype(np.int64)


# python_source: the vocabulary is fixed, so every file maps to the same ids and a model trained on one
# Python's library reads another's. Id 0 is any other character; ids 1.. are these, in this order.
PYTHON_SOURCE_VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))  # newline and printable ASCII
# Characters per window: the model reads 64 characters and predicts each next one.
PYTHON_SOURCE_WINDOW = 64
_CHAR_IDS = {c: i + 1 for i, c in enumerate(PYTHON_SOURCE_VOCAB)}


def encode_text(text: str) -> np.ndarray:
    """Character ids of `text` in the python_source vocabulary (0 for characters outside it)."""
    return np.fromiter((_CHAR_IDS.get(c, 0) for c in text), dtype=np.int64, count=len(text))


def decode_ids(ids) -> str:
    """The text of python_source ids (id 0, an unknown character, shows as U+FFFD)."""
    return "".join(PYTHON_SOURCE_VOCAB[i - 1] if i > 0 else "\ufffd" for i in np.asarray(ids).astype(int).ravel())


def python_source_dir() -> Path:
    """The running interpreter's standard-library directory (where os.py lives)."""
    return Path(sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__))


def load_python_source(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Next-character windows of the .py files directly in `path` (default: this Python's standard library).

    The files are read in sorted name order and joined with a newline; the text is cut into
    windows of PYTHON_SOURCE_WINDOW characters. x[i] is a window's character ids (float32, as every
    edgepress input), y[i] the ids of the characters that follow each one (the window shifted by one).
    Nothing is downloaded: the text ships with Python itself.
    """
    folder = Path(path) if path is not None else python_source_dir()
    sources = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not sources:
        raise EdgepressError(
            f"No .py files in {folder}: python_source reads the Python files directly in a folder (default: "
            "this Python's standard library). Leave data.path unset, or give a folder with .py files."
        )
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sources)
    ids = encode_text(text)
    count = (len(ids) - 1) // PYTHON_SOURCE_WINDOW
    window = PYTHON_SOURCE_WINDOW
    x = ids[: count * window].reshape(count, window)
    y = ids[1 : count * window + 1].reshape(count, window)
    return x.astype(np.float32), y
