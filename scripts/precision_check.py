"""Mixed precision against float32 on large mosaics of test images (detection.research.precision).

Usage:

    python scripts/precision_check.py --ckpt logs/train/runs/<run>/checkpoints/last.ckpt
    python scripts/precision_check.py --ckpt <ckpt> --grid 12 --images 432 --precisions fp32,bf16
"""

from detection.research.precision import main

if __name__ == "__main__":
    main()
