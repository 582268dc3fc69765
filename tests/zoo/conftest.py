"""The zoo stage: real torchvision / timm models and the construct models through every prunelab check.

``tests/zoo/test_constructs.py`` needs only torch and runs in every environment; ``test_zoo.py`` needs
torchvision and timm (the second virtualenv of ``.ci/run``) and is skipped without them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent):  # tests/zoo (zoo_models, tp_reference) and tests (constructs)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
