"""detection.models is plain PyTorch: importing it must not pull in Lightning or Hydra."""

from __future__ import annotations

import subprocess
import sys


def test_models_import_neither_lightning_nor_hydra() -> None:
    code = (
        "import sys\n"
        "import detection.models\n"
        "from detection.models import build_detector\n"
        "build_detector('fcos', 2, {'name': 'efficientnet_lite0', 'weights': None})\n"
        "roots = ('lightning', 'pytorch_lightning', 'hydra')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
