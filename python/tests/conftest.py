import os
import sys

# make `import vw2_sim` work when running `python -m pytest python/tests` from the repo root
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
