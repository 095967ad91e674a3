"""How long embedding a tar takes with the chunked stream that curate, cluster, search and select
use, and how often the tar is opened: `PYTHONPATH=src python bench/embed_tar_passes.py TAR CHUNK
[--stub]`. `--stub` replaces the forward pass by zeros, so the figure is reading and decoding alone.
The tar is listed before the clock starts (as opening the source does)."""
import argparse
import tempfile
import time
from pathlib import Path

import torch

import selfsup.curate.embedding as embedding
import selfsup.data.sources as sources
from selfsup.data.sources import open_source
from selfsup.encoder import load_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tar", type=Path)
    parser.add_argument("chunk", type=int)
    parser.add_argument("--stub", action="store_true", help="time reading and decoding only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    source = open_source(args.tar, whole=True)
    opened = []
    open_tar = sources._open_tar
    sources._open_tar = lambda path: opened.append(path) or open_tar(path)
    encoder = load_encoder("random:resnet18-half", image_size=32)
    if args.stub:
        def zeros(backbone, pixels, *_, bar=None, **__):
            bar.update(len(pixels))
            return torch.ones(len(pixels), 8)
        embedding.extract_features = zeros
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        got = embedding.embed_source(encoder, source, Path(work), "cpu", chunk_size=args.chunk, show_progress=False)
        took = time.perf_counter() - start
    print(f"{len(got.names)} images, chunk {args.chunk}, {'read + decode' if args.stub else 'read + decode + embed'}: "
          f"{took:.1f} s, tar opened {len(opened)} times")


if __name__ == "__main__":
    main()
