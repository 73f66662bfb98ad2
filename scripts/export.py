"""Export detectors to ONNX and TorchScript and check parity (detection.research.export).

Usage:

    python scripts/export.py --ckpt logs/fashiondet/runs/<run>/checkpoints/last.ckpt
    python scripts/export.py --heads fcos,retinanet,faster_rcnn,light_head_rcnn   # freshly built
"""

from detection.research.export import main

if __name__ == "__main__":
    main()
