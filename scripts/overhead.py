"""Lightning's training loop against a plain PyTorch one (detection.research.overhead).

Usage:

    python scripts/overhead.py                      # FCOS + EfficientNet-Lite0, 10 steps of 8 images
    python scripts/overhead.py --head retinanet --steps 20 --batch-size 16 --threads 2
"""

from detection.research.overhead import main

if __name__ == "__main__":
    main()
