"""Cut the CIFAR-10 sample that ships with selfsup (src/selfsup/sample/) from the full JPEG tar.

    python bench/make_sample.py ../shared/data/cifar10-jpg.tar.xz --train-per-class 500 --test-per-class 100

Takes the first files per class in sorted order (deterministic), keeps the JPEG bytes as they
are, and writes train/<class>/*.jpg and test/<class>/*.jpg into an .tar.xz.
"""
import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("source")
parser.add_argument("--train-per-class", type=int, default=500)
parser.add_argument("--test-per-class", type=int, default=100)
parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src/selfsup/sample/cifar10-sample.tar.xz"))
args = parser.parse_args()

files: dict[tuple[str, str], list[tuple[str, bytes]]] = defaultdict(list)
with tarfile.open(args.source, "r|*") as tar:
    for member in tar:
        parts = member.name.split("/")
        if member.isfile() and member.name.endswith(".jpg") and parts[-3] in ("train", "test"):
            files[(parts[-3], parts[-2])].append((parts[-1], tar.extractfile(member).read()))

with tarfile.open(args.out, "w:xz", preset=9) as out:
    for (split, cls), items in sorted(files.items()):
        keep = args.train_per_class if split == "train" else args.test_per_class
        for name, data in sorted(items)[:keep]:
            info = tarfile.TarInfo(f"cifar10-sample/{split}/{cls}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            out.addfile(info, io.BytesIO(data))
print(args.out, Path(args.out).stat().st_size, "bytes")
