"""Backbone parameters, FLOPs, training memory and speed (detection.research.profile).

Usage:

    python scripts/profile_backbone.py                                 # 6 backbones, 128 px, batch 1 and 8
    python scripts/profile_backbone.py --backbones resnet18,resnet50 --batch-sizes 2,4,8 --size 224
"""

from detection.research.profile import main

if __name__ == "__main__":
    main()
