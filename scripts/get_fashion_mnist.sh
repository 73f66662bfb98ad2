#!/usr/bin/env bash
# Make the Fashion-MNIST IDX files available offline. Debian ships them in the package
# dataset-fashion-mnist; as root on Debian we install it, elsewhere we say what to do.
set -euo pipefail
debian_dir=/usr/share/datasets/fashion-mnist
if [ -f "$debian_dir/train-images-idx3-ubyte.gz" ]; then
    exit 0
fi
if [ -n "${FASHION_MNIST_DIR:-}" ] && [ -d "$FASHION_MNIST_DIR" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian package dataset-fashion-mnist (Fashion-MNIST IDX files)"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
    exit 0
fi
cat <<MSG
Fashion-MNIST was not found at $debian_dir. Either
  - install it: sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu), or
  - put the torchvision layout under data/FashionMNIST/raw/, or
  - run online with data.download=true (torchvision downloads it).
MSG
