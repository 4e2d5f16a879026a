"""``python export.py ...`` in the repository: the same as ``python -m slab_ms.export ...``."""
import sys

from slab_ms.export import main

if __name__ == "__main__":
    sys.exit(main())
