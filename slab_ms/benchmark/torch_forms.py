"""The PyTorch side: a child process that builds timm's counterpart of a family's baseline and times its forward
on request. It imports neither MindSpore nor slab_ms, so any interpreter with torch and timm can run it."""
import json
import sys
import time

if __package__:
    from .children import serve
else:  # run as a script by another interpreter, next to children.py
    from children import serve


def start(spec):
    """timm's ``spec["model"]`` with ``spec["threads"]`` torch threads; returns ``serve``'s pair."""
    import timm
    import torch
    torch.set_num_threads(spec["threads"])
    net = timm.create_model(spec["model"], pretrained=False).eval()
    inputs = {}

    def answer(kind, b):
        if kind != "time":
            raise ValueError(f"unknown request {kind!r}")
        if b not in inputs:
            inputs[b] = torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            start_time = time.perf_counter()
            net(inputs[b])
            return "seconds", time.perf_counter() - start_time

    return None, answer


if __name__ == "__main__":
    serve(lambda: start(json.loads(sys.argv[1])))
