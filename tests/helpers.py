"""Helpers shared by the test files (a test file imports these, never another test file): tiny models and their
inputs, random weights, the norms left in a network, the relative error of logits, the γ probe, a weighted-sum
loss for gradient checks."""
import csv
import json
import os
import subprocess
import sys
import types

import numpy as np
from mindspore import Tensor, nn

import slab_ms
from slab_ms.layers import PRepBN, PRepBNSchedule, RepBN, TokenBatchNorm, attach_prepbn_schedule
from slab_ms.models import tiny_config
from slab_ms.training import TrainStep, build_optimizer

NORM_TYPES = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, TokenBatchNorm, RepBN, PRepBN)


def randomize(net, seed=0, weight_gain=1.0):
    """Random weights (std gain/√fan_in), random BN statistics and affines, RepBN η in [0.5, 1.5], non-zero
    biases and positional encodings: a fold that drops a term shows up. RepBN does not normalise the
    residual stream, so deep models need gain < 1 to keep their logits finite and O(10)."""
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        value = param.asnumpy()
        if not np.issubdtype(value.dtype, np.floating):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "moving_variance":
            new = rng.uniform(0.5, 2.0, value.shape)
        elif leaf in ("alpha", "gamma"):
            new = rng.uniform(0.5, 1.5, value.shape)
        elif leaf in ("moving_mean", "beta", "bias"):
            new = rng.normal(0.0, 0.2, value.shape)
        elif leaf == "weight":
            new = rng.normal(0.0, weight_gain / np.sqrt(np.prod(value.shape[1:])), value.shape)
        else:  # positional encodings / embeddings, class token, relative position bias tables
            new = rng.normal(0.0, 0.1, value.shape)
        param.set_data(Tensor(new.astype(value.dtype)))
    if PRepBNSchedule.of(net):
        PRepBNSchedule.of(net).set(step=1)  # mid-decay: eval must still be pure RepBN
    return net.set_train(False)


def tiny_model(name, **kwargs):
    """``name`` at its tiny config with 10 classes and random weights, in eval mode."""
    return randomize(slab_ms.create_model(name, num_classes=10, **dict(tiny_config(name), **kwargs)))


def tiny_input(name, batch=2, seed=1):
    """A random float32 image batch (a Tensor) of ``name``'s tiny config."""
    size = tiny_config(name)["image_size"]
    return Tensor(np.random.default_rng(seed).standard_normal((batch, 3, size, size), dtype=np.float32))


def norm_cells(net):
    """``[(name, type name)]`` of every normalization cell of ``net``."""
    return [(name, type(cell).__name__) for name, cell in net.cells_and_names() if isinstance(cell, NORM_TYPES)]


def relative_error(actual, expected):
    """max |actual − expected| / max(1, max |expected|): the 1e-4 · max(1, |logit|) tolerance of the folds."""
    return float(np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max())))


# ------------------------------------------------------------------------------------------------- γ probe
# One PRepBN on a fixed input, trained with lr 0 (weights never change and the BN uses batch statistics), so the
# loss is exactly affine in the γ the layer used in that forward pass: loss = γ·a + (1 − γ)·b.
T, WARM, ACCUM = 3, 1, 2
OPT_ARGS = types.SimpleNamespace(opt="adamw", beta1=0.9, beta2=0.999, weight_decay=0.05, momentum=0.9)


class GammaProbe(nn.Cell):
    def __init__(self, weight):
        super().__init__()
        self.norm = PRepBN(4, PRepBNSchedule(T, WARM), ln_eps=1e-6)
        self.weight = Tensor(weight)
        attach_prepbn_schedule(self)

    def construct(self, x, labels):
        return (self.norm(x) * self.weight).mean()


def probe_constants(x, weight):
    """Loss at γ = 1 (LayerNorm) and γ = 0 (RepBN with batch statistics, α = 1), float64."""
    x = x.astype(np.float64)
    ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    mu, var = x.mean((0, 1)), x.var((0, 1))
    repbn = (x - mu) / np.sqrt(var + 1e-5) + x
    return float((ln * weight).mean()), float((repbn * weight).mean())


def build_probe(weight):
    """The probe, its optimizer (lr 0) and its compiled train step with ``ACCUM`` micro-batches per step."""
    probe = GammaProbe(weight)
    optimizer = build_optimizer(probe, OPT_ARGS, [0.0] * 100)
    step = TrainStep(probe, optimizer, probe, accumulate_steps=ACCUM)
    step.set_train(True)
    return probe, optimizer, step


def observed_gammas(step, x, micro_batches, a, b):
    """γ of each of ``micro_batches`` train-step calls, read back from the loss."""
    labels = Tensor(np.zeros((x.shape[0],), np.int32))
    gammas = []
    for _ in range(micro_batches):
        loss, _ = step(Tensor(x), labels)
        gammas.append((float(loss.asnumpy()) - b) / (a - b))
    return gammas


class WeightedSum(nn.Cell):
    """Σ weights · cell(x): a loss whose gradient for the cell's output is ``weights`` (random, so no cancellation
    hides a wrong gradient)."""

    def __init__(self, cell, weights):
        super().__init__()
        self.cell = cell
        self.weights = weights

    def construct(self, x):
        return (self.cell(x) * self.weights).sum()


def outputs_on_thread_counts(script, folder, tag, thread_counts):
    """The .npz that ``python -c script PATH tag`` writes with SLAB_MS_NATIVE_THREADS set to each of
    ``thread_counts``, in order (a fresh process each: the kernels read the count when their library loads)."""
    outputs = []
    for threads in thread_counts:
        env = dict(os.environ, SLAB_MS_NATIVE_THREADS=threads, PYTHONPATH=os.pathsep.join(sys.path))
        path = folder / f"threads{threads}_{tag}.npz"
        subprocess.run([sys.executable, "-c", script, str(path), tag], env=env, check=True, capture_output=True,
                       timeout=300)
        outputs.append(np.load(path))
    return outputs


def run_benchmark(folder, argv):
    """``slab_ms.benchmark.main(argv + --json/--csv into folder)``, asserted to exit 0 (what the console script exits
    with after a run); returns the JSON and the CSV rows it wrote."""
    from slab_ms import benchmark
    paths = {"json": str(folder / "out.json"), "csv": str(folder / "out.csv")}
    assert benchmark.main([*argv, "--json", paths["json"], "--csv", paths["csv"]]) == 0
    with open(paths["json"]) as f:
        result = json.load(f)
    with open(paths["csv"], newline="") as f:
        return result, list(csv.DictReader(f))
