"""The MindSpore side: a child process that builds one form (or the GEMM reference) and times its forward, its
training step or its per-op profile on request. Run by the driver as ``python -m slab_ms.benchmark.ms_forms SPEC``."""
import csv
import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import mindspore as ms
from mindspore import nn

from .. import cli, create_model, reparameterize_model
from ..layers import Dense
from ..layers.flops import count_flops
from .children import serve
from .families import FAMILIES, GEMM, GEMM_DEPTH, GEMM_SHAPE, QUICK, gemm_flops


class GemmChain(nn.Cell):
    """The GEMM reference: ``GEMM_DEPTH`` chained (1568×192)·(192×768) and (1568×768)·(768×192) products, run as the
    models' dense layers run (``layers.Dense``: the native sgemm on a float32 CPU)."""

    def __init__(self):
        super().__init__()
        _, k, n = GEMM_SHAPE
        rng = np.random.default_rng(0)
        self.up = Dense(k, n, weight_init=ms.Tensor(rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)),
                        has_bias=False)
        self.down = Dense(n, k, weight_init=ms.Tensor(rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(n)),
                          has_bias=False)

    def construct(self, x):
        for i in range(GEMM_DEPTH):
            x = self.up(x) if i % 2 == 0 else self.down(x)
        return x


def build(member, quick, with_flops):
    """The network of a (family, form) member, or the GEMM chain; returns (net, image size, FLOPs per image or
    None)."""
    if member == GEMM:
        return GemmChain(), None, gemm_flops()
    family, form = member
    name, kwargs, deploy = FAMILIES[family][2][form]
    kwargs = dict(kwargs)
    image_size = 224
    if quick:
        extra, image_size = QUICK[family]
        kwargs.update(extra, image_size=image_size)
    ms.set_seed(0)
    net = create_model(name, num_classes=1000, **kwargs).set_train(False)
    if deploy:
        net = reparameterize_model(net)
    return net, image_size, count_flops(net, image_size) if with_flops else None


def train_step(net):
    """One SGD step of ``net`` on (images, labels), compiled once."""
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(net.trainable_params(), learning_rate=1e-4, momentum=0.9)

    def forward(x, y):
        return loss_fn(net(x), y)

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters)

    @ms.jit
    def step(x, y):
        loss, grads = grad_fn(x, y)
        optimizer(grads)
        return loss

    return step


def profile(net, x, top=12):
    """Per-op-type time (ms per call) of ``net(x)`` from MindSpore's profiler, largest first."""
    net(x).asnumpy()
    folder = tempfile.mkdtemp(prefix="slab_profile_")
    try:
        profiler = ms.Profiler(output_path=folder)
        calls = 3
        for _ in range(calls):
            net(x).asnumpy()
        profiler.stop()
        profiler.analyse()
        by_type = {}
        for path in glob.glob(os.path.join(folder, "**", "cpu_op_type_info_*.csv"), recursive=True):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    op = row["op_type"]
                    by_type[op] = by_type.get(op, 0.0) + float(row["total_compute_time"]) / calls
        return sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start(spec):
    """Build the member of ``spec`` (keys member, threads, jit_level, quick, flops); returns ``serve``'s pair.
    The "ready" value is the FLOPs per image, counted here when ``spec["flops"]`` is None."""
    member = spec["member"] if spec["member"] == GEMM else tuple(spec["member"])
    cli.cpu_graph_mode(spec["threads"])
    if spec["jit_level"]:
        ms.set_context(jit_config={"jit_level": spec["jit_level"]})
    net, image_size, counted = build(member, spec["quick"], spec["flops"] is None)
    inputs, steps = {}, {}

    def answer(kind, b):
        if b not in inputs:
            shape = GEMM_SHAPE[:2] if member == GEMM else (b, 3, image_size, image_size)
            inputs[b] = ms.Tensor(np.random.default_rng(b).standard_normal(shape, dtype=np.float32))
        x = inputs[b]
        if kind == "profile":
            return "profile", profile(net, x)
        if kind == "time":
            net.set_train(False)
            start_time = time.perf_counter()
            net(x).asnumpy()
        elif kind == "train":
            net.set_train(True)
            if b not in steps:
                steps[b] = (train_step(net), ms.Tensor(np.arange(b) % 1000, ms.int32))
            step, labels = steps[b]
            start_time = time.perf_counter()
            step(x, labels).asnumpy()
        else:
            raise ValueError(f"unknown request {kind!r}")
        return "seconds", time.perf_counter() - start_time

    return counted if spec["flops"] is None else spec["flops"], answer


if __name__ == "__main__":
    serve(lambda: start(json.loads(sys.argv[1])))
