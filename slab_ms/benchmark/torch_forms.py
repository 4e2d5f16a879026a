"""The PyTorch side: a child process that builds one counterpart of our forms and times its forward (or one
training step) on request. It imports neither MindSpore nor slab_ms, so any interpreter with torch can run it
(``--torch_python``).

Counterparts (``families.torch_counterpart``): timm's DeiT-T / Swin-T for the LayerNorm baseline, the official SLAB
code's models for the PRepBN and SLAB forms. The official code ships no fold for deployment; for the deploy forms this
worker folds every eval-mode RepBN, BN(x) + α·x (an affine map per channel, s·x + t), into the Linear that reads it
(W·diag(s), b + W·t) or, where the norm's output feeds the residual stream (patch embeddings, merge blocks), into the
convolution before it (s·W, s·b + t): the algebra of our ``reparameterize_model``. Before timing, it checks that the
folded model gives the unfolded model's logits within 1e-4·max(1, max|logit|).
"""
import contextlib
import io
import json
import os
import sys
import time
import warnings

if __package__:
    from .children import serve
    from .families import OFFICIAL_MODELS
else:  # run as a script by another interpreter, next to children.py and families.py
    from children import serve
    from families import OFFICIAL_MODELS

FOLD_TOLERANCE = 1e-4


def probe(official_code):
    """What this interpreter can run: the version of torch / timm or why it does not import, and whether the
    official code imports from ``official_code`` (None: not asked)."""
    found = {}
    for name in ("torch", "timm"):
        try:
            found[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001  (any import failure means: no such counterpart)
            found[name] = None
            found[name + "_error"] = f"{type(err).__name__}: {err}"
    if official_code and found["torch"] and found["timm"]:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for module_name in sorted({entry[0] for forms in OFFICIAL_MODELS.values() for entry in forms.values()}):
                    official_module(official_code, module_name)
            found["official"] = True
        except Exception as err:  # noqa: BLE001
            found["official"] = False
            found["official_error"] = f"{type(err).__name__}: {err}"
    return found


def official_module(official_code, name):
    """Module ``name`` of the official classification code (``models.<name>``, imported as it imports itself)."""
    import importlib
    if official_code not in sys.path:
        sys.path.insert(0, official_code)
    return importlib.import_module(f"models.{name}")


def build(spec):
    """The counterpart network of ``spec`` (keys source: "timm" | "official", model, kwargs, official_code). What
    the official code prints while it builds (a line per attention layer, deprecation warnings of its timm imports)
    is dropped."""
    if spec["source"] == "timm":
        import timm
        return timm.create_model(spec["model"], pretrained=False, **spec["kwargs"])
    module_name, factory = spec["model"]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(official_module(spec["official_code"], module_name), factory)(**spec["kwargs"])


def randomise_norms(net, generator):
    """Random running statistics, affine parameters and α for every BatchNorm / RepBN, so that the fold check
    compares something (fresh statistics make RepBN nearly the identity)."""
    import torch
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(0.5 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                module.weight.copy_(1 + 0.2 * torch.randn(c, generator=generator))
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))
            elif hasattr(module, "alpha") and hasattr(module, "bn"):
                module.alpha.copy_(0.5 + torch.rand(1, generator=generator))


def repbn_affine(norm):
    """(s, t) of an eval-mode RepBN: BN(x) + α·x = s·x + t per channel."""
    import torch
    bn = norm.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale + norm.alpha, bn.bias - scale * bn.running_mean


def fold_into_reader(layer, s, t):
    """``layer(s·x + t)`` as one Linear, or one Conv2d without padding, on ``x``."""
    import torch
    weight = layer.weight
    shift = weight @ t if weight.dim() == 2 else torch.einsum("oikl,i->o", weight, t)
    if isinstance(layer, torch.nn.Conv2d) and any(p != 0 for p in layer.padding):
        raise ValueError("an affine map folds into a padded convolution only off the borders")
    layer.weight.copy_(weight * (s if weight.dim() == 2 else s[:, None, None]))
    if layer.bias is None:
        layer.bias = torch.nn.Parameter(shift)
    else:
        layer.bias.copy_(layer.bias + shift)


def fold_into_writer(layer, s, t):
    """``s·layer(x) + t`` as one Conv2d / Linear."""
    import torch
    layer.weight.copy_(layer.weight * s.reshape(-1, *[1] * (layer.weight.dim() - 1)))
    bias = t if layer.bias is None else s * layer.bias + t
    layer.bias = torch.nn.Parameter(bias)


def fold_targets(net, path):
    """Where the norm at ``path`` folds: ("reader", layers that read its output) or ("writer", the layer whose
    output it normalises). Raises for a norm whose place this does not know."""
    import torch
    parent_path, _, name = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    if name == "norm1":  # a block's attention input: qkv (on the block or its attention), or q with kv / sr
        if hasattr(parent, "qkv"):
            return "reader", [parent.qkv]
        attn = parent.attn
        if hasattr(attn, "qkv"):
            return "reader", [attn.qkv]
        return "reader", [attn.q, attn.sr if hasattr(attn, "sr") else attn.kv]
    if name == "norm2":
        return "reader", [parent.mlp.fc1]
    if name == "norm" and hasattr(parent, "kv") and hasattr(parent, "sr"):  # spatial reduction's norm
        return "reader", [parent.kv]
    if name == "norm" and hasattr(parent, "reduction"):  # Swin's patch merging
        return "reader", [parent.reduction]
    if name == "norm" and hasattr(parent, "head"):  # the final norm: pooling or the class token, then the head
        return "reader", [parent.head]
    if name == "norm" and isinstance(getattr(parent, "proj", getattr(parent, "conv", None)), torch.nn.Conv2d):
        return "writer", getattr(parent, "proj", None) or parent.conv  # patch embedding / merge block
    if isinstance(parent, torch.nn.Sequential) and name.isdigit():  # conv, rearrange, norm
        convs = [m for m in list(parent)[:int(name)] if isinstance(m, torch.nn.Conv2d)]
        if convs:
            return "writer", convs[-1]
    raise ValueError(f"no fold known for the norm at {path!r}")


def fold_repbn(net):
    """Fold every eval-mode RepBN (alone or as the eval branch of the official LinearNorm) away, in place;
    returns how many were folded."""
    import torch
    folds = []
    for path, module in net.named_modules():
        if folds and path.startswith(folds[-1][0] + "."):
            continue  # inside a LinearNorm taken whole
        if hasattr(module, "norm2") and hasattr(module, "total_step"):  # LinearNorm: RepBN (norm2) in eval mode
            folds.append((path, module.norm2))
        elif hasattr(module, "alpha") and hasattr(module, "bn"):
            folds.append((path, module))
    with torch.no_grad():
        for path, norm in folds:
            s, t = repbn_affine(norm)
            kind, target = fold_targets(net, path)
            for layer in (target if kind == "reader" else [target]):
                (fold_into_reader if kind == "reader" else fold_into_writer)(layer, s, t)
            parent_path, _, name = path.rpartition(".")
            setattr(net.get_submodule(parent_path) if parent_path else net, name, torch.nn.Identity())
    return len(folds)


def fastest_thread_count(run, candidates, tries=3):
    """The thread count of ``candidates`` with the lowest median time of ``run()`` (``tries`` calls each)."""
    import statistics
    import torch
    times = {}
    for n in candidates:
        torch.set_num_threads(n)
        run()
        samples = []
        for _ in range(tries):
            start_time = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start_time)
        times[n] = statistics.median(samples)
    return min(times, key=times.get)


def start(spec):
    """Build ``spec``'s counterpart (keys as ``build``, plus deploy, threads: None for torch's own default, a
    count, or "best"); returns ``serve``'s pair. "ready" carries torch's thread count and, for a deploy form, the
    fold's largest logit difference."""
    if spec.get("probe"):
        return probe(spec.get("official_code")), None
    import torch
    if isinstance(spec["threads"], int):
        torch.set_num_threads(spec["threads"])
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = build(spec)
    randomise_norms(net, generator)
    net.eval()
    ready = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if spec["deploy"]:
        x = torch.randn(2, 3, 224, 224, generator=generator)
        with torch.inference_mode():
            before = net(x)
            ready["folded_norms"] = fold_repbn(net)
            after = net(x)
        error = float((after - before).abs().max())
        bound = FOLD_TOLERANCE * max(1.0, float(before.abs().max()))
        assert error <= bound, f"the folded official model's logits differ by {error:.3g} (> {bound:.3g})"
        ready["fold_max_abs_diff"] = error
    inputs, steps, threads = {}, {}, {}
    default_threads = torch.get_num_threads()

    def forward(b):
        with torch.inference_mode():
            net(inputs[b])

    def answer(kind, b):
        if b not in inputs:
            inputs[b] = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
        if kind == "threads":  # the thread count used at this batch size, tuned first for "best"
            if b not in threads:
                threads[b] = default_threads if spec["threads"] != "best" else fastest_thread_count(
                    lambda: forward(b), range(1, 2 * (os.cpu_count() or 1) + 1))
            return "threads", threads[b]
        torch.set_num_threads(threads.get(b, default_threads))
        if kind == "time":
            net.eval()
            start_time = time.perf_counter()
            forward(b)
        elif kind == "train":
            net.train()
            if b not in steps:
                steps[b] = (torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9),
                            torch.arange(b) % 1000)
            optimizer, labels = steps[b]
            start_time = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(inputs[b]), labels).backward()
            optimizer.step()
        else:
            raise ValueError(f"unknown request {kind!r}")
        return "seconds", time.perf_counter() - start_time

    return ready, answer


if __name__ == "__main__":
    serve(lambda: start(json.loads(sys.argv[1])))
