"""Crafted checkpoints end in one clear error within a time and memory budget: MindSpore ``.ckpt`` records that
contradict their bytes, NaN weights, ``.pth`` pickles built to hash or walk exponentially or to nest a million
deep, stride-0 and zip memory bombs, ``.npz`` / ``.safetensors`` headers that lie. The readers run in a child
process under an address-space limit and a timeout; MindSpore's entry points (export, create_model, MindCV's
create_model, train --resume) in child processes too, so a heap corruption would show as a crash."""
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import mindspore as ms
import pytest
from mindspore.train.checkpoint_pb2 import Checkpoint

from slab_ms.export import main as export_main
from slab_ms.weights.guard import Budget, configure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "official_small_deit_prepbn.pth")
MODEL = "slab_deit_tiny"
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4}
CHILD_LIMIT_GB = 3  # address space of a reader's child process: the readers must stay well inside it
CASE_SECONDS = 10


def _ckpt(path, records):
    """A ``.ckpt`` of ``(name, dims, type, bytes)`` records in MindSpore's protobuf schema."""
    proto = Checkpoint()
    for name, dims, kind, content in records:
        value = proto.value.add()
        value.tag = name
        value.tensor.dims.extend(dims)
        value.tensor.tensor_type = kind
        value.tensor.tensor_content = content
    path.write_bytes(proto.SerializeToString())
    return str(path)


# -- raw pickle pieces (protocol 2, as torch.save writes)
def _text(value):
    data = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _global(module, name):
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _ints(values):
    return pickle.MARK + b"".join(pickle.BININT + struct.pack("<i", v) for v in values) + pickle.TUPLE


def _tensor(size, stride, key="0"):
    """``_rebuild_tensor_v2(<FloatStorage key>, 0, size, stride)`` as pickle opcodes."""
    storage = (pickle.MARK + _text("storage") + _global("torch", "FloatStorage") + _text(key) + _text("cpu")
               + pickle.BININT1 + b"\x01" + pickle.TUPLE + pickle.BINPERSID)
    return (_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + storage + pickle.BININT1 + b"\x00"
            + _ints(size) + _ints(stride) + pickle.TUPLE + pickle.REDUCE)


def _dag(levels, empty, pair):
    """A container DAG: level i+1 holds level i twice (memo GETs), so a naive walk or hash takes 2**levels steps."""
    out = empty + pickle.BINPUT + b"\x00" + pickle.POP
    for i in range(levels):
        out += pair(pickle.BINGET + bytes([i])) + pickle.BINPUT + bytes([i + 1]) + pickle.POP
    return out + pickle.BINGET + bytes([levels])


def _tuple_dag(levels):
    return _dag(levels, pickle.EMPTY_TUPLE, lambda get: get + get + pickle.TUPLE2)


def _list_dag(levels):
    return _dag(levels, pickle.EMPTY_LIST, lambda get: pickle.EMPTY_LIST + pickle.MARK + get + get + pickle.APPENDS)


def _pth(path, pickled, members=None, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr("archive/data.pkl", pickled)
        for name, data in (members or {}).items():
            archive.writestr(f"archive/data/{name}", data)
    return str(path)


def _model_dict(body):
    """``{"model": {<body's items>}}``: ``body`` pushes key/value pairs, set with SETITEMS."""
    return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + _text("model") + pickle.EMPTY_DICT + pickle.MARK + body
            + pickle.SETITEMS + pickle.SETITEM + pickle.STOP)


def _npy(shape, descr="<f4", data=b""):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def _npz(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data)
    return str(path)


def _safetensors(path, header, data=b""):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


NAN = np.array([np.nan, 1.0, np.inf], np.float32).tobytes()
DEEP_KEY = pickle.EMPTY_TUPLE + pickle.TUPLE1 * 10 ** 6 + pickle.NONE  # a key nested a million deep
STORAGE = {"0": np.zeros(1, np.float32).tobytes()}
STRIDE0 = b"".join(_text(f"w{i}") + _tensor((25 << 20,), (0,)) for i in range(40))  # 40 x 100 MiB of one float
ZEROS = {"0": bytes(1 << 20)}
UNREADABLE, STATE_ERROR, BUDGET = "UnreadableCheckpointError", "CheckpointFormatError", "CheckpointBudgetError"
# case -> (reader, folder -> the crafted file's path, budget GiB or None, expected error type, text of the message)
CASES = {
    # MindSpore .ckpt
    "ckpt fewer elements than bytes": (
        "ckpt", lambda f: _ckpt(f / "a.ckpt", [("w", [2, 2], "Float32", bytes(64))]), None, UNREADABLE,
        "tensor 'w' of shape (2, 2) and type Float32 needs 16 bytes, the file holds 64"),
    "ckpt negative dim": (
        "ckpt", lambda f: _ckpt(f / "b.ckpt", [("w", [-1, 4], "Float32", bytes(16))]), None, UNREADABLE,
        "has the dims (-1, 4): not up to 32 non-negative sizes"),
    "ckpt dims past the bytes": (
        "ckpt", lambda f: _ckpt(f / "c.ckpt", [("w", [2 ** 40, 2 ** 40], "Float32", bytes(4))]), None, UNREADABLE,
        "needs 4835703278458516698824704 bytes, the file holds 4"),
    "ckpt unknown type": (
        "ckpt", lambda f: _ckpt(f / "d.ckpt", [("w", [1], "Complex512", bytes(4))]), None, UNREADABLE,
        "unknown type 'Complex512'"),
    "ckpt name with a control character": (
        "ckpt", lambda f: _ckpt(f / "e.ckpt", [("a\x00b", [1], "Float32", bytes(4))]), None, UNREADABLE,
        "is not 1 to 1024 printable characters"),
    "ckpt name twice": (
        "ckpt", lambda f: _ckpt(f / "g.ckpt", [("w", [1], "Float32", bytes(4)), ("v", [], "Int64", bytes(8)),
                                               ("w", [1], "Float32", bytes(4))]), None, UNREADABLE,
        "tensor 'w' appears twice"),
    "ckpt empty": ("ckpt", lambda f: _ckpt(f / "h.ckpt", []), None, UNREADABLE, "it holds no tensors"),
    "ckpt NaN and inf": (
        "ckpt", lambda f: _ckpt(f / "i.ckpt", [("blocks.0.w", [3], "Float32", NAN)]), None,
        "NonFiniteCheckpointError", "tensor 'blocks.0.w' holds 1 NaN and 1 inf values of 3"),
    "ckpt over the budget": (
        "ckpt", lambda f: _ckpt(f / "j.ckpt", [("w", [1 << 19], "Float32", bytes(2 << 20))]), 0.001, BUDGET,
        "over the budget of 0.001 GiB (--max_checkpoint_gb"),
    # .pth: exponential hashing / walks, deep nesting, unbounded reprs, memory bombs
    "pth tuple DAG as a SETITEM key": (
        "state", lambda f: _pth(f / "a.pth", _model_dict(_tuple_dag(100) + pickle.NONE)), None, STATE_ERROR,
        "a dict key of a tuple: only numbers, text and bytes"),
    "pth tuple DAG as a DICT key": (
        "state", lambda f: _pth(f / "b.pth", pickle.PROTO + b"\x02" + pickle.MARK + _tuple_dag(100) + pickle.NONE
                                + pickle.DICT + pickle.STOP), None, STATE_ERROR, "a dict key of a tuple"),
    "pth tuple DAG in a FROZENSET": (
        "state", lambda f: _pth(f / "c.pth", pickle.PROTO + b"\x04" + pickle.MARK + _tuple_dag(100)
                                + pickle.FROZENSET + pickle.STOP), None, STATE_ERROR, "frozenset of a tuple"),
    "pth list DAG given to set()": (
        "state", lambda f: _pth(f / "d.pth", pickle.PROTO + b"\x02" + _global("__builtin__", "set") + _list_dag(100)
                                + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP), None, STATE_ERROR, "set of a list"),
    "pth key nested a million deep": (
        "state", lambda f: _pth(f / "e.pth", _model_dict(DEEP_KEY)), None, STATE_ERROR, "a dict key of a tuple"),
    "pth persistent id a DAG": (
        "state", lambda f: _pth(f / "f.pth", pickle.PROTO + b"\x02" + _tuple_dag(100) + pickle.BINPERSID
                                + pickle.STOP), None, STATE_ERROR,
        "a persistent id ((((...), (...)), ((...), (...))), (((...), (...)), ((...), "),
    "pth stride-0 tensors over the total budget": (
        "state", lambda f: _pth(f / "g.pth", _model_dict(STRIDE0), STORAGE), 0.25, BUDGET,
        "a tensor of size (26214400,) (stride (0,), storage of 1 elements) brings"),
    "pth small zip member expanding 1000 times": (
        "state", lambda f: _pth(f / "h.pth", _model_dict(_text("w") + _tensor((1 << 18,), (1,))), ZEROS,
                                zipfile.ZIP_DEFLATED), None, STATE_ERROR, "member 'archive/data/0' expands"),
    # .npz and .safetensors: headers checked before any data is read
    "npz header larger than its data": (
        "state", lambda f: _npz(f / "a.npz", {"w": _npy((10 ** 9,), data=bytes(16))}), None, STATE_ERROR,
        "array 'w' of shape (1000000000,) and dtype float32 needs 4000000000 bytes, its member holds 16"),
    "npz object array": (
        "state", lambda f: _npz(f / "b.npz", {"w": _npy((1,), "|O", b"\x80\x02N.")}), None, STATE_ERROR,
        "numpy dtype object is not a plain number type"),
    "npz over the budget": (
        "state", lambda f: _npz(f / "c.npz", {"w": _npy((1 << 20,), data=bytes(4 << 20))}), 0.001, BUDGET,
        "array 'w' of shape (1048576,) brings"),
    "safetensors sparse 8 GiB tensor": (
        "state", lambda f: _safetensors(f / "a.safetensors", {"w": {"dtype": "F32", "shape": [1 << 31],
                                                                   "data_offsets": [0, 8 << 30]}}, bytes(16)),
        None, STATE_ERROR, "a byte range within the file's 16 data bytes"),
    "safetensors name with a control character": (
        "state", lambda f: _safetensors(f / "b.safetensors", {"\x01": {"dtype": "F32", "shape": [1],
                                                                       "data_offsets": [0, 4]}}, bytes(4)),
        None, STATE_ERROR, "is not 1 to 1024 printable characters"),
    "safetensors shape against its bytes": (
        "state", lambda f: _safetensors(f / "c.safetensors", {"w": {"dtype": "F32", "shape": [3],
                                                                   "data_offsets": [0, 4]}}, bytes(4)),
        None, STATE_ERROR, "tensor 'w' of shape [3] and dtype F32 needs 12 bytes, its byte range holds 4"),
}


_READER_CHILD = r'''
import json, resource, sys, time
limit = int(sys.argv[1]) << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from slab_ms.weights.checkpoint import read_ckpt
from slab_ms.weights.guard import configure
from slab_ms.weights.official import read_state_dict
results = {}
for case, (reader, path, gb) in json.loads(sys.argv[2]).items():
    configure(gb)
    start = time.time()
    try:
        (read_ckpt if reader == "ckpt" else read_state_dict)(path)
        outcome = ["read", ""]
    except Exception as err:
        outcome = [type(err).__name__, str(err)]
    results[case] = outcome + [time.time() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]
print("RESULTS " + json.dumps(results))
'''


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every case of CASES read in one child process under the address-space limit."""
    folder = tmp_path_factory.mktemp("hostile")
    cases = {case: (reader, make(folder), gb, kind, text) for case, (reader, make, gb, kind, text) in CASES.items()}
    run = {case: (reader, path, gb) for case, (reader, path, gb, _, _) in cases.items()}
    proc = subprocess.run([sys.executable, "-c", _READER_CHILD, str(CHILD_LIMIT_GB), json.dumps(run)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cases, json.loads(proc.stdout.split("RESULTS ", 1)[1])


@pytest.mark.parametrize("case", CASES)
def test_crafted_file_is_one_clear_error_within_time_and_memory(hostile, case):
    cases, results = hostile
    _, path, _, kind, text = cases[case]
    error, message, seconds, _ = results[case]
    assert error == kind and text in message and message.startswith(f"'{path}'"), (error, message)
    assert len(message) < 600, message  # bounded reprs
    assert seconds < CASE_SECONDS, seconds
    if "DAG" in case:
        assert os.path.getsize(path) <= 1200  # a 1.2 KB file


def _tiny_ckpt(path, **replace):
    """A finished tiny model's checkpoint in MindSpore's schema with the records in ``replace`` swapped in."""
    import slab_ms  # pylint: disable=import-outside-toplevel
    net = slab_ms.create_model(MODEL, num_classes=2, image_size=32, **TINY)
    kinds = {ms.float32: "Float32", ms.int32: "Int32", ms.int64: "Int64"}
    records = [(name, list(p.shape), kinds[p.dtype], p.asnumpy().tobytes()) for name, p in net.parameters_and_names()]
    records = [(name, *replace[name]) if name in replace else (name, dims, kind, data)
               for name, dims, kind, data in records]
    return _ckpt(path, records)


_ENTRY_CHILD = r'''
import json, sys
import mindcv
import slab_ms
from slab_ms.export import main as export_main
from slab_ms.weights.guard import configure
bad, nan, tiny = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {"export": export_main(["--model", "slab_deit_tiny", "--ckpt_file", bad, "--num_classes", "2", "--image_size",
                              "32", "--model_kwargs", json.dumps(tiny), "--file_name", bad + ".out"])}
for name, create in (("create_model", slab_ms.create_model), ("mindcv.create_model", mindcv.create_model)):
    for path in (bad, nan):
        try:
            create("slab_deit_tiny", num_classes=2, image_size=32, checkpoint_path=path, **tiny)
            out[name + " " + path] = "loaded"
        except ValueError as err:
            out[name + " " + path] = str(err)
configure(allow_nonfinite=True)
slab_ms.create_model("slab_deit_tiny", num_classes=2, image_size=32, checkpoint_path=nan, **tiny)
out["allowed"] = "loaded"
print("RESULTS " + json.dumps(out))
'''


def test_crafted_ckpt_through_mindspore_entry_points_is_one_error_not_a_crash(tmp_path):
    """Records whose dims do not match their bytes made MindSpore's loader corrupt the heap (SIGSEGV / abort) in
    export, create_model(checkpoint_path=) and MindCV's create_model; NaN weights loaded silently."""
    bad = _tiny_ckpt(tmp_path / "bad.ckpt", **{"head.weight": ([2, 32], "Float32", bytes(8))})
    nan = _tiny_ckpt(tmp_path / "nan.ckpt", **{"head.bias": ([2], "Float32", np.float32([np.nan, 0]).tobytes())})
    proc = subprocess.run([sys.executable, "-c", _ENTRY_CHILD, bad, nan, json.dumps(TINY)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]  # a crash would be a negative status
    out = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    assert out.pop("export") == 2 and "export.py: error: " in proc.stderr
    assert "tensor 'head.weight' of shape (2, 32) and type Float32 needs 256 bytes, the file holds 8" in proc.stderr
    assert out.pop("allowed") == "loaded"
    for key, message in out.items():
        wanted = "needs 256 bytes, the file holds 8" if bad in key else "tensor 'head.bias' holds 1 NaN and 0 inf"
        assert wanted in message, (key, message)
    assert sorted(os.listdir(tmp_path)) == ["bad.ckpt", "nan.ckpt"]


@pytest.mark.parametrize("dims, data, message", [
    ([10 ** 8, 0], b"", "head.weight has the shape (100000000, 0), not (classes, features)"),
    ([10 ** 9, 0], b"", "head.weight has the shape (1000000000, 0), not (classes, features)"),
    ([], bytes(4), "head.weight has the shape (), not (classes, features)"),
    ([10 ** 6, 1], bytes(4 * 10 ** 6), "head.weight has the shape (1000000, 1) but slab_deit_tiny feeds its "
                                       "classifier 32 features"),
], ids=["1e8 x 0", "1e9 x 0", "scalar", "1e6 x 1"])
def test_export_refuses_a_head_it_cannot_take_the_class_count_from(tmp_path, capsys, dims, data, message):
    """Without --num_classes, export reads the class count from head.weight: a (1e8, 0) head once built a 12.8 GB
    classifier, (1e9, 0) a MemoryError, a scalar an IndexError; a (1e6, 1) head would build 1e6 x 32."""
    ckpt = _tiny_ckpt(tmp_path / f"{MODEL}.ckpt", **{"head.weight": (dims, "Float32", data)})
    assert export_main(["--ckpt_file", ckpt, "--image_size", "32", "--model_kwargs", json.dumps(TINY),
                        "--file_name", str(tmp_path / "net")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("export.py: error:") == 1 and "Traceback" not in err


def test_budget_follows_the_model_and_the_flag(tmp_path):
    import slab_ms  # pylint: disable=import-outside-toplevel
    net = slab_ms.create_model(MODEL, num_classes=2, image_size=32, **TINY)
    assert Budget("x", net).limit == 1 << 30  # a tiny model: the floor
    try:
        configure(max_checkpoint_gb=20)
        assert Budget("x", net).limit == 20 << 30 and Budget("x").limit == 20 << 30
    finally:
        configure()
    assert Budget("x").limit == 4 << 30
    with pytest.raises(ValueError, match="--max_checkpoint_gb must be > 0"):
        configure(max_checkpoint_gb=0)


_FUZZ_CHILD = r'''
import json, os, signal, sys
import slab_ms
from slab_ms.weights import load_checkpoint, read_state_dict
folder, tiny = sys.argv[1], json.loads(sys.argv[2])
net = slab_ms.create_model("slab_deit_tiny", num_classes=2, image_size=32, **tiny)
def hang(*_):
    raise TimeoutError("hang")
signal.signal(signal.SIGALRM, hang)
results = []
for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    signal.alarm(20)
    try:
        load_checkpoint(net, path) if name.endswith(".ckpt") else read_state_dict(path)
        results.append([name, "ok", ""])
    except (ValueError, FileNotFoundError) as err:
        results.append([name, "error", str(err)])
    except BaseException as err:
        results.append([name, "exception", f"{type(err).__name__}: {err}"])
    finally:
        signal.alarm(0)
print("RESULTS " + json.dumps(results))
'''


def _fuzzed(data, rng, count, members=None):
    """Truncations and byte flips of ``data``; with ``members`` (a zip's name -> bytes) also flips inside one
    member, re-zipped with valid CRCs so the member's own parser is reached."""
    out = []
    for index in range(count):
        kind = index % (3 if members else 2)
        if kind == 0:
            out.append(data[:int(rng.integers(0, len(data)))])
            continue
        name = list(members)[int(rng.integers(0, len(members)))] if kind == 2 else None
        body = bytearray(members[name] if name else data)
        for pos in rng.integers(0, min(len(body), 256 if name else len(body)), int(rng.integers(1, 9))):
            body[pos] ^= int(rng.integers(1, 256))  # in a member: its first 256 bytes hold the .npy header
        if name is None:
            out.append(bytes(body))
            continue
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for other, content in members.items():
                archive.writestr(other, bytes(body) if other == name else content)
        out.append(buffer.getvalue())
    return out


def test_fuzzed_ckpt_and_npz_files_load_or_fail_with_one_clear_error(tmp_path):
    """100 mutations each of a real .ckpt (into a model, strictly) and of an .npz state dict, in one child
    process: each loads or is one ValueError naming the file; no other exception, hang or crash."""
    import slab_ms  # pylint: disable=import-outside-toplevel
    from slab_ms.weights import read_state_dict  # pylint: disable=import-outside-toplevel
    net = slab_ms.create_model(MODEL, num_classes=2, image_size=32, **TINY)
    ms.save_checkpoint(net, str(tmp_path / "real.ckpt"))
    np.savez(tmp_path / "real.npz", **read_state_dict(FIXTURE))
    folder = tmp_path / "fuzz"
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    ckpt = (tmp_path / "real.ckpt").read_bytes()
    for index, content in enumerate(_fuzzed(ckpt, rng, 100)):
        (folder / f"{index:03d}.ckpt").write_bytes(content)
    npz = (tmp_path / "real.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "real.npz") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    for index, content in enumerate(_fuzzed(npz, rng, 100, members)):
        (folder / f"{index:03d}.npz").write_bytes(content)
    proc = subprocess.run([sys.executable, "-c", _FUZZ_CHILD, str(folder), json.dumps(TINY)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    assert len(results) == 200
    errors = {".ckpt": 0, ".npz": 0}
    for name, outcome, message in results:
        assert outcome in ("ok", "error"), (name, message)
        if outcome == "error":
            errors[name[-5:] if name.endswith(".ckpt") else ".npz"] += 1
            assert str(folder / name) in message and len(message) < 2000, (name, message)
    assert errors[".ckpt"] > 50 and errors[".npz"] > 50, errors  # most mutations are damage the reader must notice


def test_yaml_aliases_are_refused_before_they_expand(tmp_path, capsys):
    """A "billion laughs" under 1 KB in a known key: nine levels of nine aliases would compose 9**9 items."""
    from slab_ms.train import main as train_main  # pylint: disable=import-outside-toplevel
    from slab_ms.training.config import ConfigError, read_recipe  # pylint: disable=import-outside-toplevel
    levels = ["&a0 [" + ", ".join(["1"] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(f"model: {MODEL}\nlr: [{', '.join(levels)}]\n")
    assert bomb.stat().st_size < 1024
    with pytest.raises(ConfigError, match=r"the alias \*a0 is not allowed in a recipe .* line 2"):
        read_recipe(str(bomb))
    assert train_main(["-c", str(bomb)]) == 2
    assert "train.py: error: " in capsys.readouterr().err


TEXT_KEYS = ("dataset", "train_split", "val_split", "interpolation", "opt", "loss", "auto_augment", "scheduler",
             "ckpt_dir", "resume", "ckpt_file", "re_value")
WRONG_TYPES = (5, [1, 2], {"a": 1}, True, None)


def _recipe(tmp_path, **keys):
    path = tmp_path / "recipe.yaml"
    import yaml  # pylint: disable=import-outside-toplevel
    path.write_text(yaml.safe_dump({"model": MODEL, "data_dir": str(tmp_path), **keys}))
    return str(path)


@pytest.mark.parametrize("key", TEXT_KEYS)
def test_recipe_text_keys_of_another_type_are_one_message_naming_the_key(tmp_path, key):
    """A number, list, mapping, boolean or null where a text option belongs (each crashed somewhere in the data
    pipeline, MindCV or the file system before) is refused when the recipe is read."""
    from slab_ms.training.config import ConfigError, parse_args  # pylint: disable=import-outside-toplevel
    for value in WRONG_TYPES:
        if key == "re_value" and value == 5 or value is None and key == "auto_augment":
            continue  # a valid erasing value; auto_augment's default is None
        with pytest.raises(ConfigError, match=f"key '{key}' "):
            parse_args(["-c", _recipe(tmp_path, **{key: value})])


@pytest.mark.parametrize("keys, message", [
    ({"opt": "adamx"}, "opt must be one of sgd, momentum"),
    ({"loss": "mse"}, "loss must be one of ce, bce"),
    ({"auto_augment": "randomaug-m9"}, "auto_augment must start with one of randaug"),
    ({"re_value": 0.5}, "expected 'random' or an integer pixel value in [0, 255], got 0.5"),
    ({"re_value": 256}, "expected 'random' or an integer pixel value in [0, 255], got 256"),
])
def test_recipe_values_mindcv_would_fail_on_are_refused_at_parse_time(tmp_path, keys, message, capsys):
    from slab_ms.train import main as train_main  # pylint: disable=import-outside-toplevel
    assert train_main(["-c", _recipe(tmp_path, **keys)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("train.py: error:") == 1 and "Traceback" not in err, err


def test_re_value_zero_with_random_erasing_is_what_mindspore_takes(tmp_path):
    """--re_value 0 was read as 0.0, which MindSpore's RandomErasing refuses (a traceback inside MindCV)."""
    from mindspore.dataset import vision  # pylint: disable=import-outside-toplevel
    from slab_ms.training.config import parse_args  # pylint: disable=import-outside-toplevel
    for given, wanted in (("0", 0), ("255", 255), ("random", "random"), ("RANDOM", "random")):
        args = parse_args(["-c", _recipe(tmp_path), "--re_prob", "0.25", "--re_value", given])
        assert args.re_value == wanted and type(args.re_value) is type(wanted)
        vision.RandomErasing(prob=args.re_prob, value=args.re_value)  # MindSpore's own check of the value


@pytest.mark.parametrize("kwargs, message", [
    ({"bogus": 1}, "slab_deit_tiny has no option bogus; its options are "),
    ({"depth": 10 ** 8}, "slab_deit_tiny: depth=100000000 is not a number in (0, 256]"),
    ({"embed_dim": 10 ** 6}, "slab_deit_tiny: embed_dim=1000000 is not a number in (0, 16384]"),
    ({"image_size": 10 ** 5}, "slab_deit_tiny: image_size=100000 is not a number in (0, 8192]"),
    ({"depth": "12"}, "slab_deit_tiny: depth='12' is not a number"),
])
def test_model_kwargs_unknown_or_too_large_are_refused_before_building(kwargs, message):
    import slab_ms  # pylint: disable=import-outside-toplevel
    with pytest.raises(ValueError) as err:
        slab_ms.create_model(MODEL, num_classes=2, **kwargs)
    assert message in str(err.value)


def test_deeply_nested_recipe_and_model_kwargs_are_one_message_at_once(tmp_path, capsys):
    """PyYAML's scanner takes quadratic time in the nesting depth (20 KB of brackets: half a minute) and its
    composer recurses: a recipe is refused past 32 levels, in flow or block style, and past 1 MiB."""
    import time  # pylint: disable=import-outside-toplevel
    from slab_ms.train import main as train_main  # pylint: disable=import-outside-toplevel
    flow, block, big = tmp_path / "flow.yaml", tmp_path / "block.yaml", tmp_path / "big.yaml"
    flow.write_text(f"model: {MODEL}\nlr: " + "[" * 10000 + "]" * 10000 + "\n")
    block.write_text(f"model: {MODEL}\nlr:\n" + "".join(" " * i + "-\n" for i in range(1, 40)))
    big.write_text("#" * (2 << 20))
    start = time.time()
    for path, message in ((flow, "nested deeper than 32 levels"), (block, "nested deeper than 32 levels"),
                          (big, "is not a recipe")):
        assert train_main(["-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("train.py: error:") == 1, err
    assert time.time() - start < 10
    with pytest.raises(SystemExit):  # argparse's own message and exit status 2
        train_main(["-c", _recipe(tmp_path), "--model_kwargs", "[" * 100000 + "]" * 100000])
    assert "argument --model_kwargs: expected a JSON object" in capsys.readouterr().err


def test_tool_flags_set_the_budget_and_let_nan_through(tmp_path, capsys):
    """--max_checkpoint_gb and --allow_nonfinite as a tool passes them (convert here; every tool has both)."""
    from slab_ms.convert import main as convert_main  # pylint: disable=import-outside-toplevel
    from slab_ms.weights import read_state_dict  # pylint: disable=import-outside-toplevel
    state = read_state_dict(FIXTURE)
    name = next(k for k, v in state.items() if v.dtype == np.float32 and v.size > 1)
    state[name] = state[name].copy()
    state[name].flat[0] = np.nan
    npz = str(tmp_path / "nan.npz")
    np.savez(npz, **state)
    model = ["--model", "deit_small_prepbn", "--num_classes", "10", "--model_kwargs",
             '{"image_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}', "--ckpt_file", npz]
    assert convert_main(model + ["--file_name", str(tmp_path / "a.ckpt")]) == 2
    assert f"tensor '{name}' holds 1 NaN and 0 inf values" in capsys.readouterr().err
    assert convert_main(model + ["--file_name", str(tmp_path / "b.ckpt"), "--max_checkpoint_gb", "0.00001",
                                 "--allow_nonfinite"]) == 2
    assert "over the budget of 1e-05 GiB (--max_checkpoint_gb 1e-05 GiB)" in capsys.readouterr().err
    assert convert_main(model + ["--file_name", str(tmp_path / "c.ckpt"), "--allow_nonfinite"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt", "nan.npz"]


def test_read_ckpt_gives_what_mindspore_reads_from_its_own_files(tmp_path):
    """Float32, bfloat16, int64 and text entries, with and without the CRC trailer: the checked reader returns
    what mindspore.load_checkpoint returns; a CRC that does not match is refused."""
    from slab_ms.weights.checkpoint import (  # pylint: disable=import-outside-toplevel
        UnreadableCheckpointError, read_ckpt)
    entries = [{"name": "w", "data": ms.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))},
               {"name": "b", "data": ms.Tensor(np.float32([1.5, -2.0]), ms.bfloat16)}]
    for crc in (False, True):
        path = str(tmp_path / f"crc{crc}.ckpt")
        ms.save_checkpoint(entries, path, append_dict={"epoch_num": 3, "note": "hello"}, crc_check=crc)
        mine, theirs = read_ckpt(path), ms.load_checkpoint(path)
        assert mine.keys() == theirs.keys() == {"w", "b", "epoch_num", "note"} and mine["note"] == theirs["note"]
        for key in ("w", "b", "epoch_num"):
            assert mine[key].dtype == theirs[key].dtype and mine[key].shape == theirs[key].shape
            assert np.array_equal(mine[key].float().asnumpy(), theirs[key].float().asnumpy())
    data = bytearray((tmp_path / "crcTrue.ckpt").read_bytes())
    data[-1] ^= 1
    (tmp_path / "bad.ckpt").write_bytes(bytes(data))
    with pytest.raises(UnreadableCheckpointError, match="its CRC-32 does not match its records"):
        read_ckpt(str(tmp_path / "bad.ckpt"))
