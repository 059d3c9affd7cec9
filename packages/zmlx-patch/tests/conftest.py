import sys
from pathlib import Path

# the tiny-model kit lives next to the tests (no __init__.py in tests dirs; pytest uses importlib mode)
sys.path.insert(0, str(Path(__file__).parent))
