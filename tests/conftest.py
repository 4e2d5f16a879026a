import os
import sys

import mindspore as ms
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture(autouse=True)
def graph_mode():
    """Every test starts in GRAPH_MODE (parity helpers switch to PyNative for hooks and back)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


@pytest.fixture
def pynative():
    """PyNative mode for one test (the files that compare cells op by op mark every test with it)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)
