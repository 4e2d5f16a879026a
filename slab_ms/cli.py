"""The one vocabulary of the command-line tools (train, validate, export, convert, benchmark).

Each tool builds its parser from these groups, so a flag means the same thing everywhere and keeps the
MindSpore model-zoo spelling users type (``--ckpt_file``, ``--file_name``, ``--file_format``,
``--device_target``); earlier spellings stay as aliases. Bad input is one ``<tool>: error: ...`` line and
exit status 2 in every tool (:func:`run`).
"""
import argparse
import contextlib
import json
import signal
import sys
import threading

__all__ = ["UsageError", "str2bool", "json_dict", "text", "optional", "int_list", "add_model_args", "add_backbone_args",
           "backbone_kwargs", "factory_kwargs", "add_checkpoint_args", "apply_checkpoint_args", "add_device_args",
           "available_devices",
           "resolve_device", "usable_device",
           "set_context", "cpu_graph_mode", "run_graphs_on_caller", "set_cpu_threads", "check_image_size",
           "add_budget_args", "apply_budget", "Interrupted",
           "signals_deferred", "run", "DEVICES"]

DEVICES = ("CPU", "GPU", "Ascend")
PREFERENCE = ("Ascend", "GPU", "CPU")  # the default device_target: the first of these this MindSpore can use
_cpu_threads = None  # what set_cpu_threads set in this process


class UsageError(ValueError):
    """Input the tool cannot work with: one message, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM arrived while a tool ran (:func:`run`); its exit status is 128 + the signal."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.exit_status = 128 + signum


_deferral = {"depth": 0, "pending": None}


@contextlib.contextmanager
def _raising_on_signals():
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (also mid-compilation, once control is
    back in Python); later ones are ignored, so the clean-up of the first one finishes. While a MindSpore graph
    runs, MindSpore's own SIGINT handler passes SIGINT on as SIGTERM."""
    def interrupt(signum, frame):  # pylint: disable=unused-argument
        for other in (signal.SIGINT, signal.SIGTERM):
            signal.signal(other, signal.SIG_IGN)
        if _deferral["depth"]:
            _deferral["pending"] = signum
            return
        raise Interrupted(signum)
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_deferred():
    """A SIGINT / SIGTERM that arrives within the block raises :class:`Interrupted` when the block ends (a
    checkpoint being written is finished first)."""
    _deferral["depth"] += 1
    try:
        yield
    finally:
        _deferral["depth"] -= 1
    if not _deferral["depth"] and _deferral["pending"]:
        signum, _deferral["pending"] = _deferral["pending"], None
        raise Interrupted(signum)


def str2bool(value):
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "y", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got '{value}'")


def json_dict(value):
    """A dict from a yaml mapping or a JSON object string."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, RecursionError) as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"depth\": 1}}', got '{value}'") from err
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got '{value}'")
    return parsed


def text(value):
    """A text option's value: a recipe's number, list or mapping is refused (a command line always gives text)."""
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected text, got a {type(value).__name__}")
    return value


def optional(cast):
    """``cast`` that also accepts 'none' / 'null' / '' for "not set"."""
    def parse(value):
        if value is None or str(value).lower() in ("none", "null", ""):
            return None
        return cast(value)
    parse.__name__ = getattr(cast, "__name__", "value")
    parse.accepts_none = True
    return parse


def add_model_args(parser, model_default=None):
    """``--model --num_classes --image_size --model_kwargs``."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=model_default, help="registered model name, e.g. slab_deit_tiny")
    group.add_argument("--num_classes", type=optional(int), default=None,
                       help="classifier outputs (default: the recipe's, the data's or the checkpoint's)")
    group.add_argument("--image_size", type=optional(int), default=None, help="input height and width")
    group.add_argument("--model_kwargs", type=json_dict, default=None,
                       help='extra factory kwargs as JSON (or a yaml mapping in a recipe), e.g. \'{"depth": 6}\'')
    return group


def int_list(value):
    """'0,1,2,3' -> (0, 1, 2, 3) (negative indices allowed)."""
    try:
        return tuple(int(v) for v in str(value).replace(" ", "").split(",") if v != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2,3, got '{value}'") from None


def add_backbone_args(parser):
    """``--features_only --out_indices``: the detection / segmentation backbone form of a model."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--features_only", type=str2bool, nargs="?", const=True, default=False,
                       help="the backbone form: one feature map per --out_indices entry instead of logits")
    group.add_argument("--out_indices", type=optional(int_list), default=None,
                       help="stages (DeiT: blocks) whose maps the backbone returns, e.g. 0,1,2,3 (default: every "
                            "stage; DeiT: the last block)")
    return group


def backbone_kwargs(args):
    """The factory kwargs of :func:`add_backbone_args`' options ({} for the classifier)."""
    if not args.features_only:
        if args.out_indices is not None:
            raise UsageError("--out_indices needs --features_only.")
        return {}
    return {"features_only": True, "out_indices": args.out_indices}


def factory_kwargs(args):
    """``--model_kwargs`` with ``--image_size`` over it when given (one dict for ``create_model``)."""
    kwargs = dict(args.model_kwargs or {})
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    return kwargs


def add_checkpoint_args(parser, help, aliases=(), ema_aliases=()):
    """``--ckpt_file`` (the checkpoint the tool reads), ``--ckpt_ema`` (read its ``ema.*`` weights) and what a
    checkpoint reader accepts (``--max_checkpoint_gb``, ``--allow_nonfinite``: :func:`apply_checkpoint_args`)."""
    group = parser.add_argument_group("checkpoint")
    group.add_argument("--ckpt_file", *aliases, dest="ckpt_file", type=text, default="", help=help)
    group.add_argument("--ckpt_ema", *ema_aliases, dest="ckpt_ema", type=str2bool, nargs="?", const=True,
                       default=False, help="read the ema.* weights of a train.py checkpoint (trained with --ema True)")
    group.add_argument("--max_checkpoint_gb", type=optional(float), default=None,
                       help="memory a checkpoint may take once read, decompressed and its tensors built, in GiB "
                            "(default: 8x the model's parameters, at least 1 GiB); raise it for a trusted file")
    group.add_argument("--allow_nonfinite", type=str2bool, nargs="?", const=True, default=False,
                       help="load a checkpoint that holds NaN / inf values (refused by default, naming the tensor)")
    return group


def apply_checkpoint_args(args):
    """Give every checkpoint reader of this process the limits of :func:`add_checkpoint_args`' options."""
    from .weights.guard import configure  # pylint: disable=import-outside-toplevel
    configure(args.max_checkpoint_gb, args.allow_nonfinite)


def add_device_args(parser):
    """``--device_target --mode --runtime_num_threads``."""
    group = parser.add_argument_group("system")
    group.add_argument("--device_target", type=optional(text), default=None, choices=DEVICES + (None,),
                       help="None (default): the best available, Ascend, then GPU, then CPU")
    group.add_argument("--mode", type=int, default=0, choices=[0, 1], help="0: GRAPH_MODE, 1: PYNATIVE_MODE")
    group.add_argument("--runtime_num_threads", type=optional(int), default=None,
                       help="MindSpore's CPU op threads (device_context.cpu.op_tuning.threads_num; None: MindSpore's "
                            "default)")
    return group


def available_devices():
    """The devices of :data:`PREFERENCE` this MindSpore installation can use, best first."""
    import logging
    from mindspore import device_context, log  # pylint: disable=import-outside-toplevel
    ms_logger = log._get_logger()  # pylint: disable=protected-access
    level = ms_logger.level
    ms_logger.setLevel(logging.ERROR)  # an absent backend is the question here, not a warning
    try:
        return [d for d in PREFERENCE if getattr(device_context, d.lower()).is_available()]
    finally:
        ms_logger.setLevel(level)


def usable_device(device_target, print_fn=print):
    """``device_target``, or the best available device when it is None (and say which); refuse an explicit one this
    MindSpore cannot use."""
    available = available_devices()
    if device_target is None:
        others = [d for d in PREFERENCE if d not in available]
        note = f"; no {' or '.join(others)} backend in this MindSpore" if others else ""
        print_fn(f"device_target: {available[0]} (the best available{note})", flush=True)
        return available[0]
    if device_target not in available:
        raise UsageError(f"--device_target {device_target} is not usable with this MindSpore installation "
                         f"(usable here: {', '.join(available)}); leave --device_target out to use the best available")
    return device_target


def resolve_device(args, print_fn=print):
    """Set ``args.device_target`` to :func:`usable_device` when it is None; returns the device."""
    device = usable_device(args.device_target, print_fn)
    if args.device_target is None:
        args.device_target = device
    return device


def set_context(args, print_fn=print):
    """Execution mode, device (:func:`resolve_device`) and CPU threads from :func:`add_device_args`' options."""
    import mindspore as ms
    resolve_device(args, print_fn)
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == 0 else ms.PYNATIVE_MODE)
    if ms.get_context("device_target") != args.device_target:
        try:
            ms.set_device(args.device_target)
        except RuntimeError as err:
            raise UsageError(f"--device_target {args.device_target} is not usable with this MindSpore installation: "
                             f"{str(err).strip().splitlines()[0]}") from err
    if args.runtime_num_threads:
        set_cpu_threads(args.runtime_num_threads)
    if args.device_target == "CPU" and args.mode == 0:
        run_graphs_on_caller()


def cpu_graph_mode(threads=None):
    """GRAPH_MODE on MindSpore's default device (the CPU, for the benchmark and experiment tools that call this)
    with ``threads`` op threads (None: MindSpore's default) and each graph run on the calling thread
    (:func:`run_graphs_on_caller`)."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    if threads:
        set_cpu_threads(threads)
    run_graphs_on_caller()


def run_graphs_on_caller():
    """Run each compiled graph on the thread that calls it. MindSpore 2.10 otherwise hands the run to a pipeline
    thread and returns; the caller, once it reads a result, busy-waits (``Pipeline::WaitAll`` spins) until the run
    ends. On a CPU that spin takes a core from the op threads for the whole backward pass: a DeiT-T training step
    at batch 8 on 2 cores takes about twice as long with it (705 vs 364 ms in the benchmark). Kernels on Ascend /
    GPU do not share the host's cores, so only CPU runs call this. A MindSpore without the switch keeps its
    default."""
    try:
        from mindspore.graph.api import _pynative_executor  # pylint: disable=import-outside-toplevel
    except ImportError:  # MindSpore before 2.9
        from mindspore.common.api import _pynative_executor  # pylint: disable=import-outside-toplevel
    disable = getattr(_pynative_executor, "disable_frontend_and_bprop_pipeline", None)
    if disable is not None:
        disable()


def set_cpu_threads(num):
    """MindSpore's CPU op threads, through ``device_context.cpu.op_tuning.threads_num`` (``set_context(
    runtime_num_threads=...)`` is deprecated and, at 1 thread, warns about its actor threads). MindSpore takes that
    setting once per process: a later request for the same number, or any once the caller's own code has set it,
    does nothing; another number than this function set falls back to the deprecated setting."""
    import mindspore as ms
    from mindspore._c_expression import RuntimeConf  # pylint: disable=no-name-in-module
    global _cpu_threads  # pylint: disable=global-statement
    if not RuntimeConf.get_instance().is_op_threads_num_configured():
        ms.device_context.cpu.op_tuning.threads_num(int(num))
        _cpu_threads = int(num)
    elif _cpu_threads not in (None, int(num)):
        ms.set_context(runtime_num_threads=int(num))


def check_image_size(net, image_size, error=UsageError):
    """Raise ``error`` when ``image_size`` does not fit ``net``'s patch embedding / total stride or the size it
    was built for (a graph-mode model would otherwise fail only at compilation, with an IR dump)."""
    multiple = getattr(net, "total_stride", None) or getattr(net, "patch_size", None) or 1
    multiple = max(multiple) if isinstance(multiple, (tuple, list)) else int(multiple)
    if image_size is None:
        return
    if image_size < 1 or image_size % multiple:
        low = max(image_size // multiple, 1) * multiple
        raise error(f"--image_size {image_size} does not fit {type(net).__name__}: it must be a multiple of "
                    f"{multiple} (the patch size / total stride), e.g. {low} or {low + multiple}")
    built = getattr(net, "img_size", None)
    if isinstance(built, (tuple, list)) and tuple(built) != (image_size, image_size):
        raise error(f"--image_size {image_size} differs from the {built[0]}x{built[1]} {type(net).__name__} was "
                    "built for; pass the same size to the model (image_size in model_kwargs) and the tool")



def add_budget_args(parser, full, quick, quick_help):
    """``--quick`` and one option per budget setting of a demo (``full`` and ``quick``: name -> default); the
    options stay None until :func:`apply_budget` fills in the full or the quick default."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    for name, value in full.items():
        parser.add_argument(f"--{name}", type=type(value), default=None,
                            help=f"default {value} ({quick[name]} with --quick)")


def apply_budget(args, full, quick):
    """Fill each budget option the user left out with the full or (``--quick``) the quick default."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def run(tool, main, argv=None):
    """``main(argv)`` of the tool ``tool`` ("export.py", ...); bad input (UsageError / ValueError /
    FileNotFoundError) is one ``<tool>: error: ...`` line and exit status 2; SIGINT / SIGTERM one
    ``<tool>: interrupted`` line (a tool's own, if it catches :class:`Interrupted`) and 130 / 143."""
    try:
        with _raising_on_signals():
            return main(argv)
    except (ValueError, FileNotFoundError) as err:
        print(f"{tool}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as err:
        print(f"{tool}: interrupted by {err}; nothing was left half-written", file=sys.stderr, flush=True)
        return err.exit_status
