"""What the benchmark measures: the families, their forms and the GEMM reference (pure tables, no MindSpore)."""

FORMS = ("ln", "prepbn", "prepbn_deploy", "slab", "slab_deploy")
TRAINING_FORMS = ("ln", "prepbn", "slab")
FORM_LABELS = {"ln": "LayerNorm + softmax", "prepbn": "PRepBN, training form", "prepbn_deploy": "PRepBN, deploy form",
               "slab": "SLAB, training form", "slab_deploy": "SLAB, deploy form", "torch": "PyTorch (timm), LN"}
# family -> (display name, timm baseline, {form: (model name, factory kwargs, deploy?)})
FAMILIES = {
    "deit": ("DeiT-T", "deit_tiny_patch16_224", {
        "ln": ("deit_tiny_prepbn", {"norm": "ln"}, False),
        "prepbn": ("deit_tiny_prepbn", {}, False),
        "prepbn_deploy": ("deit_tiny_prepbn", {}, True),
        "slab": ("slab_deit_tiny", {}, False),
        "slab_deploy": ("slab_deit_tiny", {}, True)}),
    "swin": ("Swin-T", "swin_tiny_patch4_window7_224", {
        "ln": ("swin_tiny_prepbn", {"norm": "ln"}, False),
        "prepbn": ("swin_tiny_prepbn", {}, False),
        "prepbn_deploy": ("swin_tiny_prepbn", {}, True),
        "slab": ("slab_swin_tiny", {}, False),
        "slab_deploy": ("slab_swin_tiny", {}, True)}),
    "pvt": ("PVT-T", None, {
        "ln": ("pvt_tiny_prepbn", {"norm": "ln"}, False),
        "prepbn": ("pvt_tiny_prepbn", {}, False),
        "prepbn_deploy": ("pvt_tiny_prepbn", {}, True),
        "slab": ("slab_pvt_tiny", {}, False),
        "slab_deploy": ("slab_pvt_tiny", {}, True)}),
    "cswin": ("CSwin-T", None, {
        "ln": ("slab_cswin_tiny", {"norm": "ln", "attn": "softmax"}, False),
        "prepbn": ("slab_cswin_tiny", {"attn": "softmax"}, False),
        "prepbn_deploy": ("slab_cswin_tiny", {"attn": "softmax"}, True),
        "slab": ("slab_cswin_tiny", {}, False),
        "slab_deploy": ("slab_cswin_tiny", {}, True)}),
}
# --quick: the same code paths on narrow, shallow models (for tests and smoke runs, not for numbers).
QUICK = {
    "deit": ({"embed_dim": 32, "depth": 2, "num_heads": 2}, 64),
    "swin": ({"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}, 224),
    "pvt": ({"embed_dims": (16, 16, 32, 32), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}, 64),
    "cswin": ({"embed_dim": 16, "depth": (1, 1, 1, 1), "num_heads": (2, 2, 2, 2)}, 224),
}
# The GEMM reference: a chain of GEMM_DEPTH (1568×192)·(192×768) / (1568×768)·(768×192) matmuls in one graph.
GEMM_SHAPE, GEMM_DEPTH = (1568, 192, 768), 24
GEMM = "gemm"


def gemm_flops():
    m, k, n = GEMM_SHAPE
    return 2.0 * m * k * n * GEMM_DEPTH
