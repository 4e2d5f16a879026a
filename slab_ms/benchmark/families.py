"""What the benchmark measures: the families, their forms and the GEMM reference (pure tables, no MindSpore)."""

FORMS = ("ln", "prepbn", "prepbn_deploy", "slab", "slab_deploy")
TRAINING_FORMS = ("ln", "prepbn", "slab")
FORM_LABELS = {"ln": "LayerNorm + softmax", "prepbn": "PRepBN, training form", "prepbn_deploy": "PRepBN, deploy form",
               "slab": "SLAB, training form", "slab_deploy": "SLAB, deploy form"}
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
# The PyTorch counterparts. The LayerNorm baseline: timm's model (FAMILIES' second entry; PVT-T and CSwin-T have
# none with LayerNorm in timm). The PRepBN and SLAB forms, training and deploy: the official SLAB code's model
# (module of classification/models, factory, arguments: the settings of the released cfgs swin_t_prepbn,
# slab_swin_t, pvt_t_prepbn, slab_pvt_t and slab_cswin_t; CSwin's PRepBN form is the same code with softmax
# stripes in every stage, as ours). Drop path off, as in our models.
OFFICIAL_MODELS = {
    "deit": {"prepbn": ("deit", "deit_tiny_patch16_224_repbn", {}),
             "slab": ("slab_deit", "deit_tiny_patch16_224_linear_repbn", {})},
    "swin": {"prepbn": ("swin_transformer", "SwinTransformer", {}),
             "slab": ("slab_swin", "SlabSwinTransformer", {"window_size": 56, "attn_type": "LLSS"})},
    "pvt": {"prepbn": ("slab_pvt", "slab_pvt_tiny", {"attn_type": "SSSS"}),
            "slab": ("slab_pvt", "slab_pvt_tiny", {"attn_type": "LLLL", "la_sr_ratios": "1111"})},
    "cswin": {"prepbn": ("slab_cswin", "SLAB_CSWin_64_24181_tiny_224", {"attn_type": "SSSS"}),
              "slab": ("slab_cswin", "SLAB_CSWin_64_24181_tiny_224",
                       {"attn_type": "LLSS", "la_split_size": "56-28-14-7"})},
}


def torch_counterpart(family, form, official_code=None):
    """The spec of the PyTorch model compared with ``form`` of ``family`` (for ``torch_forms``), or None when
    there is none (no timm LayerNorm model, or no official code given)."""
    if form == "ln":
        timm_name = FAMILIES[family][1]
        return timm_name and {"source": "timm", "model": timm_name, "kwargs": {}, "deploy": False}
    if not official_code:
        return None
    module, factory, kwargs = OFFICIAL_MODELS[family][form.replace("_deploy", "")]
    return {"source": "official", "model": [module, factory], "kwargs": dict(kwargs, drop_path_rate=0.0),
            "deploy": form.endswith("_deploy"), "official_code": official_code}


def counterpart_label(spec):
    """How a row names its PyTorch model: "timm deit_tiny_patch16_224", "official SlabSwinTransformer, folded"."""
    if spec["source"] == "timm":
        return f"timm {spec['model']}"
    return f"official {spec['model'][1]}" + (", folded" if spec["deploy"] else "")


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
