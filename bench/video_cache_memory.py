"""Peak memory and time of building the video cache (selfsup.data.video.open_clips) of one long
synthetic video, from a folder and from a tar: one JSON line per (layout, cache size). Each build
runs in a fresh process, which reports its peak RSS before the build (Python, numpy, PyAV loaded)
and after it, from getrusage; the difference is the build's. Its time: wall seconds, and CPU seconds
of all its threads (steadier on a shared machine). Linux or macOS (ru_maxrss).

    PYTHONPATH=src python bench/video_cache_memory.py                     # 3,000 frames of 320x240
    PYTHONPATH=src python bench/video_cache_memory.py --frames 600 --sizes 32 --layouts tar

The cache sizes default to 32 and 256: the default cache size for image size 32 and for 224. To
compare two versions of selfsup, run it once with each on PYTHONPATH (the video is made once, in
--work, and reused)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

BUILD = """
import json, resource, sys, time
from pathlib import Path
import av, numpy
import selfsup.data.video as video
data, size, cache = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
def usage():
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_maxrss * scale, used.ru_utime + used.ru_stime
before, cpu_before = usage()
start = time.perf_counter()
clips = video.open_clips(data, size, cache_dir=cache, show_progress=False, motion=False)
seconds = time.perf_counter() - start
after, cpu_after = usage()
print(json.dumps({"rows": len(clips), "seconds": round(seconds, 2), "cpu_seconds": round(cpu_after - cpu_before, 2),
                  "peak_rss_mib": round(after / 2**20, 1), "build_rss_mib": round((after - before) / 2**20, 1)}))
"""


def write_long_video(path: Path, frames: int, width: int, height: int, seed: int = 0) -> None:
    """A moving colour pattern with some noise (a recording's motion and grain, not pure noise,
    whose file would be its raw frames' size), H.264 in mp4 with its index at the end, as a camera
    writes it."""
    import av

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            phase = t / 15
            field = np.stack([np.sin(x / 23 + phase), np.cos(y / 17 - phase), np.sin((x + y) / 31 + 2 * phase)], -1)
            image = np.clip(127 + 90 * field + rng.normal(0, 24, field.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--layouts", nargs="+", default=["folder", "tar"], choices=["folder", "tar"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "selfsup-bench-video")
    args = parser.parse_args()
    folder = args.work / f"long-{args.frames}x{args.width}x{args.height}"
    video = folder / "clip.mp4"
    if not video.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_long_video(video.with_suffix(".partial.mp4"), args.frames, args.width, args.height)
        video.with_suffix(".partial.mp4").rename(video)
    packed = folder.with_suffix(".tar")
    if not packed.is_file():
        with tarfile.open(packed, "w") as tar:
            tar.add(video, arcname="clip.mp4")
    for layout in args.layouts:
        for size in args.sizes:
            with tempfile.TemporaryDirectory(dir=args.work) as cache:  # a fresh cache: built, not reused
                data = folder if layout == "folder" else packed
                out = subprocess.run([sys.executable, "-c", BUILD, str(data), str(size), cache],
                                     check=True, stdout=subprocess.PIPE, text=True).stdout
            print(json.dumps({"layout": layout, "frames": args.frames, "source": f"{args.width}x{args.height}",
                              "video_mib": round(video.stat().st_size / 2**20, 1), "size": size,
                              **json.loads(out.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
