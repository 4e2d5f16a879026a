"""``python train.py ...`` in the repository: the same as ``python -m slab_ms.train ...``."""
import sys

from slab_ms.train import main

if __name__ == "__main__":
    sys.exit(main())
