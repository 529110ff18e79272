"""The gateway must start fast and small: no torch, ONNX Runtime, MediaPipe or OpenCV."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "mediapipe", "cv2", "kinemesh.services.worker")


def test_gateway_imports_no_model_runtime() -> None:
    code = (
        "import sys\n"
        "from kinemesh.services.gateway.api.app import create_app\n"
        "create_app()\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the gateway imported {out.strip()}"
