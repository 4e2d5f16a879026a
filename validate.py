"""``python validate.py ...`` in the repository: the same as ``python -m slab_ms.validate ...``."""
import sys

from slab_ms.validate import main

if __name__ == "__main__":
    sys.exit(main())
