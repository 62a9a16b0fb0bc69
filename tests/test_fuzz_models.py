"""Hostile model and data files through `edgepress run`, in a subprocess with a time limit: each case gets exit code 2,
a message naming the fault, no traceback, no file in the run directory, no marker file, and no hang.

Graphs are data too: a SavedModel (plain or tf_keras's) whose functions write, read, list or delete files, or a
saver tampered to read or write elsewhere, is refused before it is loaded unless trusted (each op writes or names a
MARKER file: loading and calling the model would create it). ONNX custom-domain ops, endless Loops, two outputs;
NaN weights and non-finite outputs; FIFOs, /dev/zero, configs in a cycle, zip and idx and npy files that declare
gigabytes: each refused with a message. The hang bound is a generous subprocess timeout (HANG_S): a failure there
is a hang, not a slow machine.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgepress.compat import keras as tf_keras_module
from edgepress.errors import EdgepressError
from edgepress.models.loading import open_model

tf_keras = tf_keras_module()
import tensorflow as tf  # noqa: E402  (after compat, which sets TF_USE_LEGACY_KERAS)

HANG_S = 120  # far above a refusal's few seconds on a loaded 2-core machine: reaching it means a hang
BASE = {
    "name": "fuzzmodels",
    "data": {"dataset": "digits", "train_size": 100, "test_size": 20, "calibration_samples": 10,
             "check_samples": 10},
    "exports": [{"format": "onnx", "precision": "fp32"}],
    "measure": {"runs": 2, "warmup": 0},
}

# id -> (build(tmp) -> (recipe changes, extra environment), pattern the message must match)
CASES: dict[str, tuple[Callable, str]] = {}


def case(name: str, pattern: str):
    def register(build: Callable) -> Callable:
        CASES[name] = (build, pattern)
        return build

    return register


def marker(tmp: Path) -> Path:
    return tmp / "MARKER"


def model(path: Path, **more) -> dict:
    return {"model": {"path": str(path), **more}}


# -- TensorFlow graphs whose ops reach outside the model ------------------------------------------------------


def saved_module(path: Path, body: Callable[[tf.Tensor], None]) -> Path:
    """A plain SavedModel: one Dense-like matmul on 64 inputs, its serving function also running `body(x)`."""

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.fill([64, 10], 0.01))

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32)])
        def serve(self, x):
            body(x)
            return tf.matmul(x, self.w)

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


# Each op family, written as a user of tf.io would: the marker path is in the graph, never run while saving.
GRAPH_OPS = {
    "WriteFile": lambda m: lambda x: tf.io.write_file(str(m), "pwned"),
    "ReadFile": lambda m: lambda x: tf.io.read_file(str(m)),
    "MatchingFiles": lambda m: lambda x: tf.io.matching_files(str(m.parent / "*")),
    "PrintV2": lambda m: lambda x: tf.print("pwned", output_stream=f"file://{m}"),
    "SaveV2": lambda m: lambda x: tf.raw_ops.SaveV2(prefix=str(m), tensor_names=["x"], shape_and_slices=[""],
                                                    tensors=[x]),
    # MergeV2Checkpoints deletes the checkpoints it merges: the "delete a file" op of TensorFlow's graph.
    "MergeV2Checkpoints": lambda m: lambda x: tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=[str(m.parent / "victim")], destination_prefix=str(m), delete_old_dirs=True),
}


def graph_op_case(op: str) -> None:
    @case(f"a SavedModel whose serving function runs {op}", rf"function \S+ runs the op {op}")
    def build(tmp):
        path = saved_module(tmp / "sm", GRAPH_OPS[op](marker(tmp)))
        assert not marker(tmp).exists()
        return model(path), {}


for _op in GRAPH_OPS:
    graph_op_case(_op)


@case("a tf_keras SavedModel whose layer writes a file", r"runs the op WriteFile")
def _tf_keras_writer(tmp):
    path = tf_keras_writer(tmp)
    return model(path), {}


def tf_keras_writer(tmp: Path) -> Path:
    where = str(marker(tmp))

    class Writer(tf_keras.layers.Layer):
        def call(self, x):
            tf.io.write_file(where, "pwned")
            return x

    inputs = tf_keras.Input((64,))
    outputs = tf_keras.layers.Dense(10)(Writer(name="writer")(inputs))
    tf_keras.Model(inputs, outputs).save(str(tmp / "tfk_sm"), save_format="tf")
    if marker(tmp).exists():  # Keras may call the layer eagerly while building: only loading must not
        marker(tmp).unlink()
    return tmp / "tfk_sm"


def _edit_saved_model(path: Path, edit: Callable) -> Path:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    edit(proto.meta_graphs[0].graph_def)
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())
    return path


def _string_const(name: str, value: str):
    from tensorflow.core.framework import node_def_pb2

    node = node_def_pb2.NodeDef(name=name, op="Const")
    node.attr["dtype"].type = tf.string.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def _saver_function(graph_def, kind: str):
    return next(f for f in graph_def.library.function if f.signature.name.startswith(f"__inference__traced_{kind}"))


@case("a SavedModel whose saver restores from a path of its own", r"RestoreV2, which reads a checkpoint file at a path")
def _tampered_restore(tmp):
    def edit(graph_def):
        function = _saver_function(graph_def, "restore")
        function.node_def.append(_string_const("evil_prefix", str(marker(tmp))))
        restore = next(n for n in function.node_def if n.op == "RestoreV2")
        restore.input[0] = "evil_prefix:output:0"

    return model(_edit_saved_model(saved_module(tmp / "sm", lambda x: None), edit)), {}


@case("a SavedModel whose saver climbs out of its folder", r"SaveV2, which writes a checkpoint file at a path")
def _climbing_save(tmp):
    def edit(graph_def):
        function = _saver_function(graph_def, "save")
        function.node_def.append(_string_const("up", "/../../../tmp/pwned"))
        join = next(n for n in function.node_def if n.op == "StringJoin")
        join.input[1] = "up:output:0"

    return model(_edit_saved_model(saved_module(tmp / "sm", lambda x: None), edit)), {}


@case("a SavedModel whose saver also writes a file", r"function __inference__traced_save\S* runs the op WriteFile")
def _saver_writes(tmp):
    def edit(graph_def):
        from tensorflow.core.framework import node_def_pb2

        function = _saver_function(graph_def, "save")
        function.node_def.extend([_string_const("where", str(marker(tmp))), _string_const("what", "pwned")])
        write = node_def_pb2.NodeDef(name="write", op="WriteFile", input=["where:output:0", "what:output:0"])
        function.node_def.append(write)

    return model(_edit_saved_model(saved_module(tmp / "sm", lambda x: None), edit)), {}


@case("a SavedModel graph node outside any function that writes a file", r"the graph runs the op WriteFile")
def _graph_node_writes(tmp):
    def edit(graph_def):
        from tensorflow.core.framework import node_def_pb2

        graph_def.node.extend([_string_const("where", str(marker(tmp))), _string_const("what", "pwned")])
        graph_def.node.append(node_def_pb2.NodeDef(name="write", op="WriteFile", input=["where", "what"]))

    return model(_edit_saved_model(saved_module(tmp / "sm", lambda x: None), edit)), {}


# -- ONNX ----------------------------------------------------------------------------------------------------


def onnx_file(path: Path, nodes: list, outputs: int = 1, opset: int = 17, domains: tuple = (),
              weights: np.ndarray | None = None, extra: list | None = None) -> Path:
    """An ONNX model on (N, 8, 8) inputs: `nodes` turn x into `f` (N, 64), then f @ w gives y (N, 10)."""
    import onnx
    from onnx import TensorProto, helper

    w = np.full((64, 10), 0.01, np.float32) if weights is None else weights
    nodes = [*nodes, helper.make_node("MatMul", ["f", "w"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])]
    if outputs == 2:
        nodes.append(helper.make_node("Identity", ["y"], ["y2"]))
        outs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [None, 10]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8])],
                              outs, [helper.make_tensor("w", TensorProto.FLOAT, [64, 10], w.ravel()),
                                     *(extra or [])])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def flatten():
    from onnx import helper

    return helper.make_node("Flatten", ["x"], ["f"])


ONNX_EXPORTS = {"exports": [{"format": "onnx", "precision": "fp32"}]}


@case("an ONNX model with a custom-domain op", r"op Evil of the custom domain 'evil\.ops'")
def _custom_domain(tmp):
    from onnx import helper

    nodes = [helper.make_node("Evil", ["x"], ["e"], domain="evil.ops"), helper.make_node("Flatten", ["e"], ["f"])]
    return {**model(onnx_file(tmp / "m.onnx", nodes, domains=("evil.ops",))), **ONNX_EXPORTS}, {}


@case("an ONNX model with two outputs", r"2 outputs")
def _two_outputs(tmp):
    return {**model(onnx_file(tmp / "m.onnx", [flatten()], outputs=2)), **ONNX_EXPORTS}, {}


@case("an ONNX model with an op ONNX does not have", r"NoSuchOp")
def _unknown_op(tmp):
    from onnx import helper

    nodes = [helper.make_node("NoSuchOp", ["x"], ["e"]), helper.make_node("Flatten", ["e"], ["f"])]
    return {**model(onnx_file(tmp / "m.onnx", nodes)), **ONNX_EXPORTS}, {}


@case("an ONNX model of opset 999", r"stamped with ONNX opset 999, and this onnx and onnxruntime know opsets up to")
def _opset_999(tmp):
    return {**model(onnx_file(tmp / "m.onnx", [flatten()], opset=999)), **ONNX_EXPORTS}, {}


@case("an ONNX model with a Loop that never ends", r"did not return within 3 s")
def _endless_loop(tmp):
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [value("i", TensorProto.INT64, []), value("cond_in", TensorProto.BOOL, []),
                 value("v_in", TensorProto.FLOAT, None)],
        [value("cond_out", TensorProto.BOOL, []), value("v_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Constant", [], ["true"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
             helper.make_node("Loop", ["", "true", "x"], ["looped"], body=body),
             helper.make_node("Flatten", ["looped"], ["f"])]
    return {**model(onnx_file(tmp / "m.onnx", nodes)), **ONNX_EXPORTS}, {"EDGEPRESS_INVOKE_LIMIT_S": "3"}


# -- nonsense models ---------------------------------------------------------------------------------------------


@case("a Keras model with NaN weights", r"weights that are not finite.*NaN")
def _nan_keras(tmp):
    net = tf_keras.Sequential([tf_keras.Input((64,)), tf_keras.layers.Dense(10, name="logits")])
    kernel, bias = net.get_weights()
    kernel[3, 2] = np.nan
    net.set_weights([kernel, bias])
    net.save(tmp / "nan.keras")
    return model(tmp / "nan.keras"), {}


@case("an ONNX model with infinite weights", r"weights that are not finite.*'w'.*1 infinite")
def _inf_onnx(tmp):
    w = np.full((64, 10), 0.01, np.float32)
    w[0, 0] = np.inf
    return {**model(onnx_file(tmp / "m.onnx", [flatten()], weights=w)), **ONNX_EXPORTS}, {}


@case("an ONNX model whose outputs are not finite", r"outputs values that are not finite")
def _nan_outputs(tmp):
    from onnx import TensorProto, helper

    # Finite weights, and a division by zero: every output is infinite or NaN.
    nodes = [helper.make_node("Flatten", ["x"], ["g"]), helper.make_node("Div", ["g", "zero"], ["f"])]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    return {**model(onnx_file(tmp / "m.onnx", nodes, extra=[zero])), **ONNX_EXPORTS}, {}


# -- files that are not what they say, and sizes declared to be huge ---------------------------------------------


def fifo(tmp: Path, name: str) -> Path:
    os.mkfifo(tmp / name)
    return tmp / name


@case("a FIFO as the .keras model", r"FIFO")
def _fifo_keras(tmp):
    return model(fifo(tmp, "model.keras")), {}


@case("a FIFO as the .h5 model", r"FIFO")
def _fifo_h5(tmp):
    return model(fifo(tmp, "model.h5")), {}


@case("a device as the .onnx model", r"a device")
def _device_onnx(tmp):
    (tmp / "zero.onnx").symlink_to("/dev/zero")
    return {**model(tmp / "zero.onnx"), **ONNX_EXPORTS}, {}


@case("a FIFO as the npz data", r"FIFO")
def _fifo_npz(tmp):
    return {**model(_keras_mlp(tmp)), "data": {**BASE["data"], "dataset": "npz", "path": str(fifo(tmp, "d.npz"))}}, {}


@case("a SavedModel whose saved_model.pb is /dev/zero", r"saved_model\.pb is a device")
def _dev_zero_graph(tmp):
    path = saved_module(tmp / "sm", lambda x: None)
    (path / "saved_model.pb").unlink()
    (path / "saved_model.pb").symlink_to("/dev/zero")
    return model(path), {}


@case("a tf_keras SavedModel whose keras_metadata.pb is /dev/zero", r"keras_metadata\.pb is a device")
def _dev_zero_metadata(tmp):
    path = tmp / "tfk"
    tf_keras.Sequential([tf_keras.Input((64,)), tf_keras.layers.Dense(10)]).save(str(path), save_format="tf")
    (path / "keras_metadata.pb").unlink()
    (path / "keras_metadata.pb").symlink_to("/dev/zero")
    return model(path), {}


def _keras_mlp(tmp: Path) -> Path:
    path = tmp / "mlp.keras"
    tf_keras.Sequential([tf_keras.Input((8, 8)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(10)]).save(path)
    return path


def _functional_keras(tmp: Path, edit: Callable[[dict], None], k=tf_keras) -> Path:
    """A functional .keras file of Keras `k` (input -> a -> b -> logits) with its config.json edited by `edit`."""
    inputs = k.Input((64,), name="x")
    a = k.layers.Dense(8, name="a")(inputs)
    b = k.layers.Dense(8, name="b")(a)
    k.Model(inputs, k.layers.Dense(10, name="logits")(b)).save(tmp / "f.keras")
    with zipfile.ZipFile(tmp / "f.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp / "edited.keras", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return tmp / "edited.keras"


def _layer(config: dict, name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["name"] == name)


def _calls_from(config: dict, name: str, source: str) -> None:
    """Make layer `name` take its input from layer `source` (rewriting every layer reference of its calls)."""
    text = json.dumps(_layer(config, name)["inbound_nodes"])
    for other in ("x", "a", "b", "logits"):
        text = text.replace(f'"{other}"', f'"{source}"')
    _layer(config, name)["inbound_nodes"] = json.loads(text)


@case("a .keras model whose layers call each other in a cycle", r"cycle \(")
def _cycle(tmp):
    return model(_functional_keras(tmp, lambda c: _calls_from(c, "a", "b"))), {}


@case("a .keras model whose layer calls a missing layer", r"layer 'a' takes its input from a layer 'ghost'")
def _missing_layer(tmp):
    return model(_functional_keras(tmp, lambda c: _calls_from(c, "a", "ghost"))), {}


@case("a Keras 3 .keras model whose layers call each other in a cycle", r"cycle \(")
def _cycle_keras3(tmp):
    import keras as keras3

    return model(_functional_keras(tmp, lambda c: _calls_from(c, "b", "logits"), keras3)), {}


@case("a Keras 3 .keras model whose layer calls a missing layer", r"layer 'logits' takes its input from a layer 'gh'")
def _missing_layer_keras3(tmp):
    import keras as keras3

    return model(_functional_keras(tmp, lambda c: _calls_from(c, "logits", "gh"), keras3)), {}


@case("a .keras model whose config.json inflates to 100 MB", r"config\.json inflates to 1\d\d,\d{3},\d{3} bytes")
def _zip_bomb(tmp):
    path = _keras_mlp(tmp)
    with zipfile.ZipFile(path) as archive:
        metadata = archive.read("metadata.json")
    with zipfile.ZipFile(tmp / "bomb.keras", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", metadata)
        archive.writestr("config.json", b"{" + b" " * 100_000_000 + b"}")
    return model(tmp / "bomb.keras"), {}


def _mnist_dir(tmp: Path, images: bytes, labels: bytes) -> dict:
    folder = tmp / "mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return {**model(_keras_mlp(tmp)), "data": {**BASE["data"], "dataset": "mnist", "path": str(folder),
                                               "train_size": None, "test_size": 5}}


def _idx(dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(">" + "I" * len(dims), *dims) + data


@case("an idx file declaring 1.5 million images", r"declares an array of shape \(1500000, 28, 28\)")
def _idx_bomb(tmp):
    return _mnist_dir(tmp, _idx((1_500_000, 28, 28), bytes(1_000_000)), _idx((1_500_000,), bytes(1000))), {}


@case("idx files with fewer labels than images", r"do not match: \(30, 8, 8\) images and \(20,\) labels")
def _idx_mismatch(tmp):
    return _mnist_dir(tmp, _idx((30, 8, 8), bytes(30 * 64)), _idx((20,), bytes(20))), {}


@case("an idx file shorter than its header says", r"declares 1,920 bytes of data, and it holds 100")
def _idx_truncated(tmp):
    return _mnist_dir(tmp, _idx((30, 8, 8), bytes(100)), _idx((30,), bytes(30))), {}


def _npz(tmp: Path, members: dict[str, bytes]) -> dict:
    with zipfile.ZipFile(tmp / "d.npz", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return {**model(_keras_mlp(tmp)), "data": {**BASE["data"], "dataset": "npz", "path": str(tmp / "d.npz")}}


def _npy(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


@case("an npy header declaring 28 TiB", r"declares an array of shape \(1000000000000, 8\)")
def _npy_bomb(tmp):
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 8)}
    out = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return _npz(tmp, {"x.npy": out.getvalue() + bytes(64), "y.npy": _npy(np.zeros(30, np.int64))}), {}


@case("distill's unlabelled samples declaring 28 TiB", r"'x' declares an array of shape \(1000000000000, 8\)")
def _unlabelled_bomb(tmp):
    changes, _ = _npy_bomb(tmp)
    return {"model": {"zoo": "seed_mlp", "train_epochs": 1}, "steps": [
        {"type": "distill", "student": {"width": 0.5}, "unlabelled": changes["data"]["path"], "alpha": 0}]}, {}


@case("an npz whose x is not an array", r"entry 'x' is not a \.npy array")
def _npz_x_not_array(tmp):
    return _npz(tmp, {"x": b"just some bytes", "y.npy": _npy(np.zeros(30, np.int64))}), {}


@case("labels of 1e9", r"label of 1e\+09")
def _huge_label(tmp):
    y = np.zeros(30, np.int64)
    y[4] = 10**9
    return _npz(tmp, {"x.npy": _npy(np.zeros((30, 8, 8), np.float32)), "y.npy": _npy(y)}), {}


# -- PyTorch programs whose weight config is not a mapping --------------------------------------------------------


def _pt2_with_config(tmp: Path, config) -> Path:
    import torch

    from edgepress.models.torch_program import save_torch_program

    path = save_torch_program(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
                              torch.zeros(2, 8, 8), tmp / "m.pt2")
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name in members:
        if name.endswith("_weights_config.json"):
            members[name] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp / "edited.pt2", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return tmp / "edited.pt2"


@case("a .pt2 whose weight config is a list", r"weights config")
def _pt2_list(tmp):
    return {**model(_pt2_with_config(tmp, [1, 2])), **ONNX_EXPORTS}, {}


@case("a .pt2 whose weight config is a string", r"weights config")
def _pt2_string(tmp):
    return {**model(_pt2_with_config(tmp, "weights")), **ONNX_EXPORTS}, {}


# -- the runner ----------------------------------------------------------------------------------------------------


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from edgepress.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, "COLUMNS": "300", **(env or {})})


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_model_or_data_is_refused_cleanly(name, tmp_path):
    build, pattern = CASES[name]
    changes, env = build(tmp_path)
    recipe = {**BASE, **changes}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    result = run_cli(["run", str(tmp_path / "recipe.yaml"), "-o", str(out)], tmp_path, env)
    output = result.stdout + result.stderr
    message = " ".join(output.split())
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    assert re.search(pattern, message), message[-3000:]
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert not marker(tmp_path).exists()


# -- trusted graphs load and run (their ops do run: the marker appears) ----------------------------------------------


def test_a_trusted_saved_model_that_writes_a_file_loads_and_runs(tmp_path):
    path = saved_module(tmp_path / "sm", GRAPH_OPS["WriteFile"](marker(tmp_path)))
    with pytest.raises(EdgepressError, match="WriteFile"):
        open_model(path)
    assert not marker(tmp_path).exists()
    source = open_model(path, trusted=True)
    np.testing.assert_allclose(source.predict(np.ones((2, 64), np.float32)), 0.64, rtol=1e-5)
    assert marker(tmp_path).exists()


def test_a_trusted_tf_keras_saved_model_that_writes_a_file_loads_and_runs(tmp_path):
    path = tf_keras_writer(tmp_path)
    with pytest.raises(EdgepressError, match="WriteFile"):
        open_model(path)
    assert not marker(tmp_path).exists()
    source = open_model(path, trusted=True)
    assert source.predict(np.ones((2, 64), np.float32)).shape == (2, 10)
    assert marker(tmp_path).exists()


def test_a_trusted_onnx_custom_domain_op_is_not_refused_by_the_domain_check(tmp_path):
    # Trusted, the domain check steps aside; plain onnxruntime has no kernel for the op, and says so (exit 2).
    from onnx import helper

    nodes = [helper.make_node("Evil", ["x"], ["e"], domain="evil.ops"), helper.make_node("Flatten", ["e"], ["f"])]
    path = onnx_file(tmp_path / "m.onnx", nodes, domains=("evil.ops",))
    with pytest.raises(EdgepressError, match="custom domain"):
        open_model(path)
    with pytest.raises(EdgepressError, match="onnxruntime cannot run"):
        open_model(path, trusted=True).predict(np.ones((1, 8, 8), np.float32))


# -- what must keep loading: real models of every kind pass the graph check ------------------------------------------


def test_keras_saved_models_with_recurrent_and_normalization_layers_pass_the_graph_check(tmp_path):
    import keras as keras3

    built = {
        "lstm": tf_keras.Sequential([tf_keras.Input((8, 8)), tf_keras.layers.LSTM(4), tf_keras.layers.Dense(10)]),
        "gru": tf_keras.Sequential([tf_keras.Input((8, 8)), tf_keras.layers.GRU(4), tf_keras.layers.Dense(10)]),
        "cnn": tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Conv2D(4, 3),
                                    tf_keras.layers.BatchNormalization(), tf_keras.layers.Dropout(0.2),
                                    tf_keras.layers.Flatten(), tf_keras.layers.Dense(10, activation="softmax")]),
    }
    for name, net in built.items():
        net.save(str(tmp_path / name), save_format="tf")
        sample = np.ones((2, *net.input_shape[1:]), np.float32)
        assert open_model(tmp_path / name).predict(sample).shape == (2, 10)
    inputs = keras3.Input((8, 8))
    attended = keras3.layers.MultiHeadAttention(2, 4)(inputs, inputs)
    keras3.Model(inputs, keras3.layers.Dense(10)(keras3.layers.Flatten()(attended))).export(str(tmp_path / "k3"))
    assert open_model(tmp_path / "k3").predict(np.ones((2, 8, 8), np.float32)).shape == (2, 10)


def test_the_corpus_covers_every_case_class():
    assert len(CASES) >= 35


def test_the_runner_stops_an_onnx_call_that_does_not_return_and_names_the_artifact(tmp_path):
    # The on-device runner (numpy and a runtime only) watches every untimed call: a Loop without end is stopped.
    build, _ = CASES["an ONNX model with a Loop that never ends"]
    path = Path(build(tmp_path)[0]["model"]["path"])
    runner = Path(__file__).resolve().parents[1] / "edgepress" / "deploy" / "runner.py"
    result = subprocess.run([sys.executable, str(runner), str(path), "--runs", "1", "--warmup", "1"],
                            capture_output=True, text=True, timeout=HANG_S,
                            env={**os.environ, "EDGEPRESS_INVOKE_LIMIT_S": "2"})
    assert result.returncode == 2, result.stderr
    assert f"{path}: one call of the model did not return within 2 s" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_the_runner_refuses_data_whose_header_declares_terabytes(tmp_path):
    from edgepress.deploy.runner import RunnerError, load_data

    _npy_bomb(tmp_path)  # writes d.npz: x.npy declares (10**12, 8) float32
    with pytest.raises(RunnerError, match=r"array x declares shape \(1000000000000, 8\)"):
        load_data(str(tmp_path / "d.npz"))


def _tf1_saved_model(path: Path) -> Path:
    """A TF1 SavedModel (a Session's graph, its saver's nodes in the GraphDef itself, no object graph)."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="x")
        w = tf.compat.v1.get_variable("w", initializer=tf.fill([64, 10], 0.01))
        y = tf.matmul(x, w, name="y")
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(path))
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    return path


def test_a_tf1_saved_model_passes_and_its_tampered_saver_does_not(tmp_path):
    path = _tf1_saved_model(tmp_path / "tf1")
    np.testing.assert_allclose(open_model(path).predict(np.ones((2, 64), np.float32)), 0.64, rtol=1e-5)

    def edit(graph_def):
        graph_def.node.append(_string_const("evil_prefix", str(marker(tmp_path))))
        restore = next(n for n in graph_def.node if n.op == "RestoreV2")
        restore.input[0] = "evil_prefix"

    _edit_saved_model(path, edit)
    with pytest.raises(EdgepressError, match="the graph's saver runs the op RestoreV2, which reads a checkpoint"):
        open_model(path)


def test_bench_reports_an_onnx_artifact_that_does_not_return(tmp_path):
    # Through the transport: the runner's refusal names the artifact; exit 2, no traceback, no hang.
    build, _ = CASES["an ONNX model with a Loop that never ends"]
    path = Path(build(tmp_path)[0]["model"]["path"])
    result = run_cli(["bench", str(path), "--runs", "2", "--warmup", "1"], tmp_path, {"EDGEPRESS_INVOKE_LIMIT_S": "3"})
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output
    assert f"{path}: one call of the model did not return within 3 s" in output and "Traceback" not in output
