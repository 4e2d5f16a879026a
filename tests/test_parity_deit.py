"""DeiT family against the official PyTorch outputs (tests/fixtures, see its README)."""
import pytest

from slab_ms.models.deit import VisionTransformer
from parity_utils import check_parity, load_fixture, norm_kwargs


@pytest.mark.parametrize("fixture", ["small_deit_prepbn_repbn.npz", "small_deit_prepbn_linearnorm.npz",
                                     "small_slab_deit.npz"])
def test_deit_parity(fixture):
    _, meta = load_fixture(fixture)
    kw = dict(meta["kwargs"])
    norm = norm_kwargs(kw.pop("norm_layer"))
    attn = "sla" if meta["ctor"] == "models.slab_deit:VisionTransformer" else "softmax"
    net = VisionTransformer(**kw, **norm, attn=attn)
    errors = check_parity(net, fixture)
    assert len([k for k in errors if k.startswith("act.")]) == 7
