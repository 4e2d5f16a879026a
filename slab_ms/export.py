"""Export a SLAB model in its deploy form (every RepBN / PRepBN folded away) as MindIR, ONNX or AIR.

    python -m slab_ms.export --model slab_deit_tiny --ckpt_file slab_deit_tiny.ckpt --file_format MINDIR

(also ``python export.py`` in the repository, ``slab-export`` once installed.)

Builds ``--model``, loads ``--ckpt_file`` strictly (a MindSpore ``.ckpt``, or an official ``.pth``
through ``slab_ms.weights``), folds every foldable norm (``slab_ms.reparameterize_model``), exports,
reloads the written file (``mindspore.load`` + ``nn.GraphCell``; onnxruntime for ONNX) and compares
its logits on a fixed random batch with the training-form model in eval mode. It succeeds only if
max|Δ| ≤ 1e-4 · max(1, max|logit|) for both the deploy network and the reloaded file; a mismatch
exits with status 1 and the numbers. Bad input (missing or foreign checkpoint, unknown model,
unsupported format/device, an existing ``--file_name`` without ``--overwrite``, an input size the model
cannot take, a PRepBN checkpoint whose γ has not reached 0 without ``--allow_unfinished``) exits with
status 2 and one message. The file is written under a temporary name and renamed only after the check,
so a failed run leaves no output file; it gets the usual file mode (0644 under umask 022) and the
output folder's mode is left as it was.

``-c recipe.yaml`` (a train.py recipe) supplies ``model``, ``model_kwargs``, ``image_size`` and
``num_classes``, and the newest checkpoint in its ``ckpt_dir``; command-line options override it.
With neither ``--ckpt_file`` nor ``-c`` the newest ``*.ckpt`` under ``./output`` or ``./ckpt`` (where train.py
runs and the demo write) is exported, with the options its run recorded beside it (``<model>-config.yaml``) as the
recipe. Without ``--model`` the model is read from a train.py checkpoint name
(``<model>.ckpt``, ``<model>-EEEE_SSSSSS.ckpt``); without ``--num_classes`` the class count is read
from the checkpoint's ``head.weight`` (1000 without one). A checkpoint trained under mixed precision
(``amp_level`` O1–O3) holds float32 weights under the usual names and is read like any other.

``--export_dtype float16`` (MINDIR or AIR, for Ascend / GPU inference): the float32 deploy form is checked as above,
then put at MindCV's AMP level O2 (float16 arithmetic, float32 input and output, weights stored float32) and that
graph, in process and reloaded, is compared with the training form to 1e-2 · max(1, max|logit|).

ONNX: MindSpore's ONNX exporter has no ``Erf``, so for ONNX only the exact GELU is written as
GELU(x) = x/2 + |x|/2 · erf(|x|/√2) with erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7,
Exp/Abs/Div only); the same 1e-4 relative tolerance applies (measured deviation ~1e-6).
The exported graph uses standard MindSpore ops only (``slab_ms.layers.cpu_kernels.use_standard_ops``).
AIR is compiled by Ascend's ATC: it is exported only with ``--device_target Ascend`` and cannot be
reloaded by MindSpore, so for AIR only the in-process deploy check is made.
"""
import argparse
import dataclasses
import os
import re
import sys
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import nn
from mindspore.ops import functional as F
from mindcv.utils.amp import auto_mixed_precision

from . import cli
from .cli import UsageError
from .factory import check_model_name, create_model
from .layers import PRepBNSchedule
from .layers.cpu_kernels import use_standard_ops
from .layers.mlp import ErfFreeGELU
from .models import list_models
from .reparam import remaining_norms, reparameterize_model
from .training.config import read_recipe
from .training.outputs import run_output_path
from .utils import (atomic_output, check_output_name, check_writable_folder, first_free_path, refuse_existing,
                    remove_stale_temporaries)
from .weights import load_checkpoint, read_state_dict
from .weights.checkpoint import read_ckpt

TOOL = "export.py"

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
RELATIVE_TOLERANCE = 1e-4  # of a deploy form and an exported file: max|Δ| ≤ 1e-4 · max(1, max|output|)
FLOAT16_RELATIVE_TOLERANCE = 1e-2  # --export_dtype float16: float16's 11-bit significand through every layer
CHECKPOINT_DIRS = ("./output", "./ckpt")  # where train.py runs write checkpoints (recipes' ckpt_dir)
RECIPE_KEYS = ("model", "model_kwargs", "image_size", "num_classes")
TRAIN_CKPT_NAME = re.compile(r"^(?P<model>.+?)(-\d{4}_\d{6})?\.ckpt$")


class ExportMismatch(Exception):
    """The exported file does not reproduce the training form (the file is not kept)."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("-c", "--config", default=None, help="train.py recipe (yaml) the checkpoint was trained with")
    group = cli.add_model_args(parser)
    group.add_argument("--batch_size", default=1, type=int)
    group.add_argument("--input_size", type=cli.optional(cli.int_list), default=None,
                       help="height,width of the exported graph's input (default: --image_size square), e.g. "
                            "800,1216 for a --features_only backbone")
    cli.add_backbone_args(parser)
    cli.add_checkpoint_args(parser, "MindSpore .ckpt or official .pth (default: the newest checkpoint of the recipe "
                            "or of the demo run)", ema_aliases=("--ema",))
    group = parser.add_argument_group("output")
    group.add_argument("--file_name", default=None, help="output path without extension (default: <model>, or "
                                                         "<model>-2, -3, ... when that exists)")
    group.add_argument("--file_format", default="MINDIR", type=str.upper, help="MINDIR | ONNX | AIR")
    group.add_argument("--export_dtype", default="float32", choices=["float32", "float16"],
                       help="float16: the graph computes in float16 between float32 input and output, for Ascend / "
                            "GPU inference (checked with a relative tolerance of 1e-2 instead of 1e-4)")
    group.add_argument("--overwrite", type=cli.str2bool, nargs="?", const=True, default=False,
                       help="replace an existing output file (default: refuse)")
    group.add_argument("--allow_unfinished", type=cli.str2bool, nargs="?", const=True, default=False,
                       help="export a PRepBN checkpoint whose γ schedule has not reached 0 (as the pure RepBN it "
                            "evaluates as)")
    cli.add_device_args(parser)
    return parser.parse_args(argv)


def newest_checkpoint(folders=CHECKPOINT_DIRS):
    """The most recently written ``*.ckpt`` under ``folders`` (temporary ``.*`` files excluded), or None.
    Symlinked folders below ``folders`` are not entered (a link loop would never end the search)."""
    paths = [os.path.join(parent, name) for folder in folders for parent, _, names in os.walk(folder)
             for name in names if name.endswith(".ckpt") and not name.startswith(".")]
    paths = [p for p in paths if os.path.isfile(p)]
    return max(paths, key=os.path.getmtime) if paths else None


def _read_recipe(path):
    try:
        return read_recipe(path)
    except ValueError as err:
        raise UsageError(f"recipe: {err}") from err


def recorded_run(ckpt):
    """``(path, recipe)`` of the options a train.py run recorded beside its checkpoint ``ckpt``
    (``<model>-config.yaml``), or None for a checkpoint without them."""
    match = TRAIN_CKPT_NAME.match(os.path.basename(ckpt))
    path = match and run_output_path(os.path.dirname(ckpt), match.group("model"), "config.yaml")
    return (path, _read_recipe(path)) if path and os.path.isfile(path) else None


def default_checkpoint():
    """``(checkpoint, recipe or None)``: the newest checkpoint under ./output, ./ckpt (the demo's run folders among
    them) with the options its run recorded."""
    ckpt = newest_checkpoint()
    if ckpt is None:
        raise UsageError("no --ckpt_file given and no checkpoint of a demo run (./output, ./ckpt). Pass "
                         "--ckpt_file with a .ckpt written by train.py or slab_ms.convert, or an official "
                         ".pth (https://github.com/xinghaochen/SLAB/releases), or -c with its train.py recipe.")
    run = recorded_run(ckpt)
    print(f"{TOOL}: no --ckpt_file given; using the newest checkpoint {ckpt}"
          + (f" (options {run[0]})" if run else ""))
    return ckpt, run and run[1]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What to export, resolved once from the command line, the recipe and the checkpoint (``check_args``)."""
    model: str
    model_kwargs: dict  # as given (for messages)
    kwargs: dict  # the factory's: model_kwargs without image_size, and the backbone options
    image_size: int
    num_classes: int
    checkpoint_head: Optional[tuple]  # (classes, features) of the head the class count was read from
    ckpt_file: str
    ckpt_ema: bool
    allow_unfinished: bool
    batch_size: int
    input_hw: tuple
    path: str  # the file to write
    file_format: str
    export_dtype: str
    overwrite: bool


def check_args(args):
    """Everything that can be checked before the model is built, as ``ExportOptions``; raises UsageError. ``args``
    is left as parsed."""
    if args.file_format not in FORMATS:
        raise UsageError(f"unsupported --file_format '{args.file_format}'; choose one of {', '.join(FORMATS)}.")
    if args.file_format == "AIR" and cli.resolve_device(args) != "Ascend":
        raise UsageError("AIR can only be exported on Ascend (it is compiled by Ascend's ATC); pass "
                         "--device_target Ascend on an Ascend machine, or use --file_format MINDIR or ONNX.")
    if args.file_format == "ONNX" and args.export_dtype == "float16":
        raise UsageError("--export_dtype float16 writes MINDIR or AIR (onnxruntime cannot load MindSpore's float16 "
                         "ONNX graph); export ONNX in float32.")
    if args.file_format == "ONNX":
        try:
            import onnxruntime  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        except ImportError:
            raise UsageError("ONNX export checks the written file with onnxruntime, which is not installed: pip "
                             "install onnxruntime (or slab-ms[onnx]), or use --file_format MINDIR.") from None
    recipe = _read_recipe(args.config) if args.config else None
    ckpt_file = args.ckpt_file
    if not ckpt_file:
        if recipe is not None:
            ckpt_file = newest_checkpoint([recipe.get("ckpt_dir", "./ckpt")])
            if ckpt_file is None:
                raise UsageError(f"no checkpoint in the ckpt_dir of '{args.config}' "
                                 f"({recipe.get('ckpt_dir', './ckpt')}); train first or pass --ckpt_file.")
        else:
            ckpt_file, recipe = default_checkpoint()
    given = {key: getattr(args, key) for key in RECIPE_KEYS}
    for key in RECIPE_KEYS:  # the command line wins over the recipe
        if given[key] is None and recipe is not None and recipe.get(key) is not None:
            given[key] = recipe[key]
    kwargs = dict(given["model_kwargs"] or {})
    size = kwargs.pop("image_size", 224)  # the input size is --image_size's, else model_kwargs', else 224
    image_size = size if given["image_size"] is None else given["image_size"]
    if args.batch_size < 1 or image_size < 1:
        raise UsageError(f"--batch_size and --image_size must be positive, got {args.batch_size} and {image_size}.")
    input_hw = tuple(args.input_size or (image_size, image_size))
    if len(input_hw) != 2 or min(input_hw) < 1:
        raise UsageError(f"--input_size takes a positive height,width, got {args.input_size}.")
    if args.input_size and not args.features_only and input_hw != (image_size, image_size):
        raise UsageError("--input_size other than the square --image_size needs --features_only (the classifier "
                         "is exported at the size it was built for).")
    kwargs.update(cli.backbone_kwargs(args))
    if not os.path.isfile(ckpt_file):
        raise UsageError(f"checkpoint file not found: '{ckpt_file}'.")
    model = given["model"]
    if model is None:
        match = TRAIN_CKPT_NAME.match(os.path.basename(ckpt_file))
        if not match or match.group("model") not in list_models():
            raise UsageError(f"pass --model: the name of '{ckpt_file}' does not say which model it holds "
                             f"(registered: {', '.join(list_models())}).")
        model = match.group("model")
    num_classes, head = given["num_classes"], None
    if num_classes is None:  # a backbone has no classifier
        head = None if args.features_only else checkpoint_head(ckpt_file)
        num_classes = 0 if args.features_only else (head or (1000,))[0]
    file_name = args.file_name
    if file_name and not os.path.basename(file_name):
        raise UsageError(f"--file_name '{file_name}' is a folder; give the path of the file to write, "
                         f"e.g. {os.path.join(file_name, model)}")
    path = output_path(file_name or model, args.file_format)
    if file_name is None and not args.overwrite:  # the default name: never an earlier export's
        path = first_free_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"the folder of --file_name does not exist: {folder}")
    if os.path.isdir(path):
        raise UsageError(f"--file_name '{path}' is a folder; give the path of the file to write")
    check_output_name(path, "--file_name", FORMATS[args.file_format])
    if not args.overwrite:
        refuse_existing(path)
    check_writable_folder(folder, "the folder of --file_name", create=False)
    return ExportOptions(model=model, model_kwargs=given["model_kwargs"], kwargs=kwargs, image_size=image_size,
                         num_classes=num_classes, checkpoint_head=head, ckpt_file=ckpt_file, ckpt_ema=args.ckpt_ema,
                         allow_unfinished=args.allow_unfinished, batch_size=args.batch_size, input_hw=input_hw,
                         path=path, file_format=args.file_format, export_dtype=args.export_dtype,
                         overwrite=args.overwrite)


def output_path(file_name, file_format):
    """``file_name`` with the format's extension."""
    ext = FORMATS[file_format]
    return file_name if file_name.lower().endswith(ext) else file_name + ext


def checkpoint_head(path):
    """``(classes, features)`` of the ``head.weight`` of a MindSpore ``.ckpt`` or an official checkpoint; None for a
    headless one."""
    try:
        weights = read_ckpt(path, names={"head.weight"}) if path.endswith(".ckpt") else read_state_dict(path)
    except ValueError as err:
        raise UsageError(str(err)) from err
    head = weights.get("head.weight")
    if head is None:
        return None
    if len(head.shape) != 2 or min(head.shape) < 1:
        raise UsageError(f"'{path}': head.weight has the shape {tuple(head.shape)}, not (classes, features) of a "
                         "classifier: pass --num_classes (or --features_only for a backbone)")
    return tuple(head.shape)


def check_head_width(options):
    """Refuse a ``head.weight`` whose input width differs from the model's before a classifier of its class count is
    built: the model's head is then the checkpoint's size, which its file already holds."""
    probe = create_model(options.model, num_classes=1, image_size=options.image_size, **options.kwargs)
    head = dict(probe.parameters_and_names()).get("head.weight")
    classes, features = options.checkpoint_head
    if head is not None and features != head.shape[1]:
        raise UsageError(f"'{options.ckpt_file}': head.weight has the shape ({classes}, {features}) but "
                         f"{options.model} feeds its classifier {head.shape[1]} features: is it for another model or "
                         "size?")


def replace_exact_gelu(net):
    """Swap every ``nn.GELU`` cell of ``net`` for ``ErfFreeGELU``; returns how many were swapped."""
    count = 0
    for _, cell in list(net.cells_and_names()):
        for name, child in list(cell.name_cells().items()):
            if isinstance(child, nn.GELU):
                setattr(cell, name, ErfFreeGELU())
                count += 1
    return count


def load_model(options):
    """``--model`` built for the export and ``--ckpt_file`` loaded into it strictly, in eval mode."""
    check_model_name(options.model, UsageError)
    try:
        if options.checkpoint_head:  # the class count was read from the checkpoint
            check_head_width(options)
        net = create_model(options.model, num_classes=options.num_classes, image_size=options.image_size,
                           **options.kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"cannot build {options.model} with --model_kwargs {options.model_kwargs}: {err}") from err
    if not getattr(net, "features_only", False):  # a backbone takes any input size
        cli.check_image_size(net, options.image_size)
    try:
        load_checkpoint(net, options.ckpt_file, ema=options.ckpt_ema)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    schedule = PRepBNSchedule.of(net)
    unfinished = schedule.unfinished() if schedule else None
    if unfinished and not options.allow_unfinished:
        raise UsageError(f"'{options.ckpt_file}': {unfinished}. Train until γ = 0, or pass --allow_unfinished to "
                         "export its pure-RepBN form anyway.")
    return net.set_train(False)


def as_arrays(outputs):
    """A network's output (logits, or a backbone's tuple of maps) as a list of numpy arrays."""
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [o.asnumpy() if isinstance(o, ms.Tensor) else np.asarray(o) for o in outputs]


def reload_logits(path, file_format, x):
    """The reloaded file's outputs on ``x`` (a list: one array, or one per backbone output)."""
    if file_format == "MINDIR":
        return as_arrays(nn.GraphCell(ms.load(path))(ms.Tensor(x)))
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


class Float16Graph(nn.Cell):
    """``net`` at MindCV's AMP level O2 (float16; a norm that could not be folded stays float32) between float32
    inputs and float32 outputs."""

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        auto_mixed_precision(net, "O2")
        self.net = net

    def construct(self, x):
        return F.mixed_precision_cast(ms.float32, self.net(x))


def tolerance(reference, relative=RELATIVE_TOLERANCE):
    """``relative · max(1, max|reference|)``: the largest |Δ| allowed against the outputs ``reference`` (a list of
    arrays) of the training form."""
    return relative * max(1.0, max(float(np.abs(r).max()) for r in reference))


def max_difference(outputs, reference):
    """max |outputs − reference| over lists of arrays of the same shapes (float64), or None if the shapes differ."""
    if [o.shape for o in outputs] != [r.shape for r in reference]:
        return None
    return max(float(np.abs(np.asarray(o, np.float64) - r).max()) for o, r in zip(outputs, reference))


def write_checked(net, x, final_path, file_format, accept, overwrite=False):
    """Write ``net`` traced on ``x`` as ``file_format`` to ``final_path``: under a temporary name in the same folder
    (no partial output file), reloaded, and renamed only when ``accept(reloaded outputs)`` is true (``accept(None)``
    for AIR, which MindSpore cannot reload). Returns whether the file was kept."""
    ext = FORMATS[file_format]
    folder = os.path.dirname(os.path.abspath(final_path))
    folder_mode = os.stat(folder).st_mode & 0o7777  # MindSpore's ONNX writer chmods the folder to 0700
    try:
        with atomic_output(final_path, suffix=ext, overwrite=overwrite) as temp_path:
            try:
                ms.export(net, ms.Tensor(x), file_name=temp_path[:-len(ext)], file_format=file_format)
            except (RuntimeError, TypeError, ValueError) as err:
                raise UsageError(f"MindSpore cannot write {os.path.basename(final_path)} as {file_format}: "
                                 f"{str(err).strip().splitlines()[0]}") from err
            finally:
                if os.stat(folder).st_mode & 0o7777 != folder_mode:
                    os.chmod(folder, folder_mode)
            if not accept(None if file_format == "AIR" else reload_logits(temp_path, file_format, x)):
                raise ExportMismatch()
    except ExportMismatch:
        return False
    return True


def export(options):
    """Export and check; returns (output path or None, list of failed checks as text)."""
    net = load_model(options)
    x = np.random.default_rng(0).standard_normal((options.batch_size, 3) + options.input_hw, dtype=np.float32)
    reference = as_arrays(net(ms.Tensor(x)))
    largest = max(float(np.abs(r).max()) for r in reference)
    kind = "feature" if getattr(net, "features_only", False) else "logit"

    deploy = reparameterize_model(net)
    use_standard_ops(deploy)  # exported graphs hold standard MindSpore ops only, no native CPU kernel
    left = remaining_norms(deploy)
    print(f"{TOOL}: {options.model}: " + (f"{len(left)} norm(s) kept: " + ", ".join(
        f"{name} ({kind})" for name, kind, _ in left) if left else "every norm folded"))
    if options.file_format == "ONNX":
        print(f"{TOOL}: ONNX: {replace_exact_gelu(deploy)} exact GELU(s) written without Erf")

    failures = []

    def check(what, outputs, relative_tolerance):
        allowed = tolerance(reference, relative_tolerance)
        err = max_difference(outputs, reference)
        if err is None:
            failures.append(f"{what}: output shapes {[o.shape for o in outputs]} vs {[r.shape for r in reference]}")
            return False
        ok = err <= allowed
        print(f"{TOOL}: {what} vs training form: max|diff| {err:.3g} (max|{kind}| {largest:.4g}, "
              f"tolerance {allowed:.3g}) {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"{what}: max|diff| {err:.3g} > tolerance {allowed:.3g}")
        return ok

    if not check("deploy form", as_arrays(deploy(ms.Tensor(x))), RELATIVE_TOLERANCE):
        return None, failures
    graph, relative_tolerance = deploy, RELATIVE_TOLERANCE
    if options.export_dtype == "float16":
        graph, relative_tolerance = Float16Graph(deploy), FLOAT16_RELATIVE_TOLERANCE
        if not check("float16 deploy form", as_arrays(graph(ms.Tensor(x))), relative_tolerance):
            return None, failures

    def accept(reloaded):
        if reloaded is None:
            print(f"{TOOL}: AIR cannot be reloaded by MindSpore; only the deploy form was checked")
            return True
        return check(f"reloaded {options.file_format}", reloaded, relative_tolerance)

    kept = write_checked(graph, x, options.path, options.file_format, accept, overwrite=options.overwrite)
    return (options.path if kept else None), failures


def _export(argv):
    args = parse_args(argv)
    cli.apply_checkpoint_args(args)
    options = check_args(args)
    cli.set_context(args)
    for stale in remove_stale_temporaries(os.path.dirname(os.path.abspath(options.path))):
        print(f"{TOOL}: removed '{stale}', a temporary file left by a killed export")
    path, failures = export(options)
    if failures:
        print(f"{TOOL}: FAILED, nothing written: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(f"{TOOL}: wrote {path}")
    return 0


def main(argv=None):
    return cli.run(TOOL, _export, argv)


if __name__ == "__main__":
    sys.exit(main())
