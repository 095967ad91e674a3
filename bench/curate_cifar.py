"""Curation quality on CIFAR-10 (issue 10): does `selfsup curate` find planted near-duplicates,
remove planted copies of evaluation images, keep distractors out, and does pretraining on the
curated set beat pretraining on the raw pool at equal compute?

    python bench/curate_cifar.py --tar ../shared/data/cifar10-jpg.tar.xz --work /tmp/curate-cifar

What it builds under --work (every choice fixed by --seed; the defaults are the scale that was
run on the 2-core CPU, see BENCHMARKS.md):

- eval/train, eval/test: the CIFAR-10 sample that ships with selfsup (the first 500 training and
  the first 100 test images per class, by file name), used for the kNN evaluation only.
- pool/: a flat folder of JPEGs under random names (manifest.json says what each one is):
  * --per-class CIFAR-10 training images per class (not in eval/, seeds/ or encoder-data/);
  * --dups planted near-duplicates of some of them, cycling over five edits: JPEG re-compression
    at quality 30-60 ("jpeg"), upscaling to 40-64 px ("upscale"), downscaling to 22-28 px
    ("downscale"), cropping 2-5 px off the borders ("crop"), and a crop then quality 40-60
    ("crop+jpeg");
  * --distractors images from "another source": synthetic 32x32 pictures, in equal parts
    uniform RGB noise, smooth noise (bicubic-upsampled 4x4 to 8x8 noise), two-colour linear
    gradients, sinusoidal gratings and checkerboards, and 1-4 random ellipses/rectangles/
    triangles on a flat background; all saved as JPEG quality 75 like CIFAR-10;
  * --test-copies copies of eval/test images (a quarter each: the same bytes, "jpeg", "upscale",
    "crop"), which `--exclude eval/test` must remove.
- seeds/<class>/: --seeds-per-class further training images per class (the seed set).
- encoder-data/: --encoder-per-class further training images per class, to pretrain the encoder
  that curates (SimCLR, --encoder-epochs), so that it has seen none of the pool.

Then `selfsup curate` with that encoder (and, for reference, a random one), the counts below from
its outputs, a threshold sweep on the embeddings it saved, and SimCLR pretraining of the same
recipe for the same number of optimizer steps on (a) OUT/curated.txt and (b) the whole pool, each
evaluated with `selfsup eval knn` on eval/ (and on eval/test less the images planted in the pool),
next to the same backbone at random initialisation. Every figure is printed as one JSON line
(also appended to WORK/results.jsonl).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DUP_EDITS = ["jpeg", "upscale", "downscale", "crop", "crop+jpeg"]
TEST_EDITS = ["exact", "jpeg", "upscale", "crop"]
DISTRACTOR_KINDS = ["noise", "smooth-noise", "gradient", "grating", "shapes"]

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--tar", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.tar.xz"))
parser.add_argument("--work", default="/tmp/curate-cifar")
parser.add_argument("--per-class", type=int, default=400, help="CIFAR training images per class in the pool")
parser.add_argument("--dups", type=int, default=500, help="planted near-duplicates of pool images")
parser.add_argument("--distractors", type=int, default=2000, help="synthetic non-CIFAR images in the pool")
parser.add_argument("--test-copies", type=int, default=200, help="planted copies of eval/test images")
parser.add_argument("--seeds-per-class", type=int, default=10)
parser.add_argument("--encoder-per-class", type=int, default=500, help="images per class to pretrain the curating encoder")
parser.add_argument("--encoder-epochs", type=int, default=6)
parser.add_argument("--threshold", type=float, default=0.95, help="selfsup curate --threshold")
parser.add_argument("--k", type=int, default=50, help="selfsup curate --k")
parser.add_argument("--steps", type=int, default=150, help="optimizer steps of each comparison run (about)")
parser.add_argument("--batch-size", type=int, default=256)
parser.add_argument("--backbone", default="resnet18-half")
parser.add_argument("--random-curation", default="random:resnet18",
                    help="also curate with this encoder for reference ('' to skip)")
parser.add_argument("--eval-train", type=int, default=500, help="per class (500 and 100: the shipped sample)")
parser.add_argument("--eval-test", type=int, default=100, help="per class")
parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the selfsup runs")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--score-only", action="store_true",
                    help="only score the curations already in --work again (to WORK/scores.jsonl)")
parser.add_argument("--selfsup", default=str(Path(sys.executable).with_name("selfsup")))
args = parser.parse_args()
EVAL_TRAIN, EVAL_TEST = args.eval_train, args.eval_test  # the shipped sample: first 500 train / 100 test per class

WORK = Path(args.work).resolve()
RESULTS = WORK / ("scores.jsonl" if args.score_only else "results.jsonl")
ENV = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
       "SELFSUP_CACHE": str(WORK / "cache")}
RECIPE = ["--method", "simclr", "--backbone", args.backbone, "--no-small-stem", "--image-size", "32",
          "--batch-size", str(args.batch_size), "--lr", "0.4", "--set", "simclr.temperature=0.2",
          "--device", "cpu", "--no-progress"]  # the demo's recipe (BENCHMARKS.md, "selfsup demo")
T0 = time.perf_counter()


def emit(record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(RESULTS, "a") as f:
        f.write(line + "\n")


def selfsup(name: str, *argv: str) -> str:
    """Run one selfsup command; its stdout and stderr go to WORK/logs/NAME.log; returns stdout."""
    cmd = [args.selfsup, *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (WORK / "logs").mkdir(exist_ok=True)
    (WORK / "logs" / f"{name}.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    emit({"what": "command", "name": name, "cmd": "selfsup " + " ".join(argv), "rc": proc.returncode,
          "seconds": round(seconds, 1)})
    if proc.returncode != 0:
        sys.exit(f"{name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# Images


def read_cifar(path: str) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """{(split, class): [(file name, JPEG bytes)] sorted by name}, in one streaming pass."""
    files = defaultdict(list)
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and member.name.endswith(".jpg") and len(parts) >= 3 and parts[-3] in ("train", "test"):
                files[(parts[-3], parts[-2])].append((parts[-1], tar.extractfile(member).read()))
    return {key: sorted(items) for key, items in files.items()}


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def crop(img: Image.Image, rng) -> Image.Image:
    while True:
        l, t, r, b = rng.integers(0, 3, size=4)
        if 2 <= l + t + r + b <= 5:
            return img.crop((l, t, img.width - r, img.height - b))


def edit(data: bytes, kind: str, rng) -> bytes:
    """A near-duplicate of the JPEG `data` (see the module docstring)."""
    if kind == "exact":
        return data
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "jpeg":
        return jpeg(img, rng.integers(30, 61))
    if kind == "upscale":
        side = int(rng.integers(40, 65))
        return jpeg(img.resize((side, side), Image.BICUBIC), 90)
    if kind == "downscale":
        side = int(rng.integers(22, 29))
        return jpeg(img.resize((side, side), Image.BICUBIC), 90)
    if kind == "crop":
        return jpeg(crop(img, rng), 90)
    if kind == "crop+jpeg":
        return jpeg(crop(img, rng), rng.integers(40, 61))
    raise ValueError(kind)


def distractor(kind: str, rng, size: int = 32) -> bytes:
    """One synthetic 32x32 image that is not a photograph (see the module docstring)."""
    if kind == "noise":
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        return jpeg(Image.fromarray(arr), 75)
    if kind == "smooth-noise":
        low = int(rng.integers(4, 9))
        arr = rng.integers(0, 256, (low, low, 3), dtype=np.uint8)
        return jpeg(Image.fromarray(arr).resize((size, size), Image.BICUBIC), 75)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    elif kind == "grating":
        if rng.random() < 0.5:  # sinusoidal grating
            angle, freq = rng.uniform(0, np.pi), rng.uniform(1.5, 8)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
        else:  # checkerboard
            cell = int(rng.integers(2, 9))
            t = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2).astype(np.float32)
    elif kind == "shapes":
        img = Image.new("RGB", (size, size), tuple(int(v) for v in c0))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 5))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            x0, y0 = rng.integers(-4, size - 6, 2)
            w, h = rng.integers(6, 20, 2)
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
            elif shape == 1:
                draw.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
            else:
                pts = [tuple(int(v) for v in rng.integers(-2, size + 2, 2)) for _ in range(3)]
                draw.polygon(pts, fill=colour)
        return jpeg(img, 75)
    else:
        raise ValueError(kind)
    arr = (c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]).clip(0, 255).astype(np.uint8)
    return jpeg(Image.fromarray(arr), 75)


def build(files) -> dict:
    """Writes eval/, pool/, seeds/, encoder-data/ under WORK; returns the pool's manifest
    {name: {"kind", "source", "edit", "class"}}."""
    rng = np.random.default_rng(args.seed)
    for sub in ["eval", "eval-clean", "pool", "seeds", "encoder-data"]:
        shutil.rmtree(WORK / sub, ignore_errors=True)
    manifest: dict[str, dict] = {}
    used_names: set[str] = set()

    def put(data: bytes, **info) -> str:
        while True:
            name = f"{rng.integers(0, 2**48):012x}.jpg"
            if name not in used_names:
                break
        used_names.add(name)
        (WORK / "pool" / name).write_bytes(data)
        manifest[name] = info
        return name

    (WORK / "pool").mkdir(parents=True)
    originals = []  # (pool name, data, class)
    for cls in CLASSES:
        train, test = files[("train", cls)], files[("test", cls)]
        for split, items in [("train", train[:EVAL_TRAIN]), ("test", test[:EVAL_TEST])]:
            (WORK / "eval" / split / cls).mkdir(parents=True, exist_ok=True)
            for fname, data in items:
                (WORK / "eval" / split / cls / fname).write_bytes(data)
        start = EVAL_TRAIN
        for fname, data in train[start:start + args.per_class]:
            originals.append((put(data, kind="cifar", source=f"train/{cls}/{fname}", edit="", cls=cls), data, cls))
        start += args.per_class
        (WORK / "seeds" / cls).mkdir(parents=True)
        for fname, data in train[start:start + args.seeds_per_class]:
            (WORK / "seeds" / cls / fname).write_bytes(data)
        start += args.seeds_per_class
        (WORK / "encoder-data").mkdir(exist_ok=True)
        for fname, data in train[start:start + args.encoder_per_class]:
            (WORK / "encoder-data" / f"{cls}-{fname}").write_bytes(data)
    for i, j in enumerate(rng.choice(len(originals), size=args.dups, replace=False)):
        name, data, cls = originals[j]
        kind = DUP_EDITS[i % len(DUP_EDITS)]
        put(edit(data, kind, rng), kind="dup", source=manifest[name]["source"], edit=kind, cls=cls, original=name)
    for i in range(args.distractors):
        kind = DISTRACTOR_KINDS[i % len(DISTRACTOR_KINDS)]
        put(distractor(kind, rng), kind="distractor", source=f"synth/{i}", edit=kind, cls=kind)
    eval_test = [(cls, fname, data) for cls in CLASSES for fname, data in files[("test", cls)][:EVAL_TEST]]
    planted = set()
    for i, j in enumerate(rng.choice(len(eval_test), size=args.test_copies, replace=False)):
        cls, fname, data = eval_test[j]
        kind = TEST_EDITS[i % len(TEST_EDITS)]
        put(edit(data, kind, rng), kind="testcopy", source=f"test/{cls}/{fname}", edit=kind, cls=cls)
        planted.add((cls, fname))
    # eval-clean/test: eval/test less the images planted in the pool (a contamination check)
    for cls, fname, data in eval_test:
        if (cls, fname) not in planted:
            (WORK / "eval-clean" / "test" / cls).mkdir(parents=True, exist_ok=True)
            (WORK / "eval-clean" / "test" / cls / fname).write_bytes(data)
    (WORK / "manifest.json").write_text(json.dumps(manifest, indent=0))
    emit({"what": "data", "pool": len(manifest), **Counter(m["kind"] for m in manifest.values()),
          "seeds": len(CLASSES) * args.seeds_per_class, "encoder_data": len(CLASSES) * args.encoder_per_class,
          "eval_train": len(CLASSES) * EVAL_TRAIN, "eval_test": len(eval_test),
          "eval_test_not_planted": len(eval_test) - len(planted)})
    return manifest


# ---------------------------------------------------------------------------------------------
# Scoring a curation


def removal_report(manifest: dict, groups: list[list[str]], excluded: set[str]) -> dict:
    """Counts for near-duplicate groups (lists of names, the kept one first) and excluded names."""
    removed_dup = {n for g in groups for n in g[1:]}
    removed = removed_dup | excluded
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    dups = [n for n, m in manifest.items() if m["kind"] == "dup"]
    found = [n for n in dups if n in group_of and group_of.get(manifest[n]["original"]) == group_of[n]]
    by_edit = {e: f"{sum(1 for n in found if manifest[n]['edit'] == e)}/{sum(1 for n in dups if manifest[n]['edit'] == e)}"
               for e in DUP_EDITS}
    # Distinct content (one source image: an original and its planted copy count once), test copies aside.
    sources = defaultdict(list)
    for n, m in manifest.items():
        if m["kind"] != "testcopy":
            sources[m["source"]].append(n)
    lost = [s for s, names in sources.items() if all(n in removed for n in names)]
    lost_kinds = Counter(manifest[sources[s][0]]["kind"] if manifest[sources[s][0]]["kind"] != "dup"
                         else "cifar" for s in lost)
    lost_distractor_kinds = Counter(manifest[sources[s][0]]["edit"] for s in lost
                                    if manifest[sources[s][0]]["kind"] == "distractor")
    # removed images that share their group with no image of the same source
    unrelated = [n for n in removed_dup
                 if not any(manifest[o]["source"] == manifest[n]["source"] for o in groups[group_of[n]] if o != n)]
    tests = [n for n, m in manifest.items() if m["kind"] == "testcopy"]
    test_excl = [n for n in tests if n in excluded]
    largest = sorted(groups, key=len, reverse=True)[:3]
    return {
        "groups": len(groups), "removed_as_duplicates": len(removed_dup), "excluded": len(excluded),
        "largest_groups": [len(g) for g in largest],
        "largest_groups_kinds": [dict(Counter(manifest[n]["kind"] for n in g)) for g in largest],
        "planted_dups_found": len(found), "planted_dups_missed": len(dups) - len(found), "planted_dups": len(dups),
        "found_by_edit": by_edit,
        "removed_without_a_same_source_groupmate": len(unrelated),
        "distinct_images_lost": len(lost), "lost_by_kind": dict(lost_kinds),
        "lost_distractors_by_kind": dict(lost_distractor_kinds),
        "distinct_images": len(sources),
        "test_copies_excluded": len(test_excl), "test_copies": len(tests),
        "test_copies_excluded_by_edit": {e: f"{sum(1 for n in test_excl if manifest[n]['edit'] == e)}/"
                                            f"{sum(1 for n in tests if manifest[n]['edit'] == e)}" for e in TEST_EDITS},
        "test_copies_removed_as_duplicates_only": sum(1 for n in tests if n in removed_dup and n not in excluded),
        "false_exclusions": sum(1 for n in excluded if manifest[n]["kind"] != "testcopy"),
        "false_exclusions_by_kind": dict(Counter(manifest[n]["kind"] for n in excluded if manifest[n]["kind"] != "testcopy")),
    }


def composition(manifest: dict, names: list[str]) -> dict:
    kinds = Counter(manifest[n]["kind"] for n in names)
    cifar_classes = Counter(manifest[n]["cls"] for n in names if manifest[n]["kind"] in ("cifar", "dup", "testcopy"))
    present = set(names)
    both = sum(1 for n in names if manifest[n]["kind"] == "dup" and manifest[n]["original"] in present)
    return {"images": len(names), **{k: kinds.get(k, 0) for k in ["cifar", "dup", "distractor", "testcopy"]},
            "planted_pairs_with_both_present": both,
            "distractor_share": round(kinds.get("distractor", 0) / max(1, len(names)), 3),
            "distractors_by_kind": dict(Counter(manifest[n]["edit"] for n in names if manifest[n]["kind"] == "distractor")),
            "cifar_per_class_min_max": [min(cifar_classes.get(c, 0) for c in CLASSES),
                                        max(cifar_classes.get(c, 0) for c in CLASSES)]}


def load_embeddings(folder: Path) -> tuple[list[str], np.ndarray]:
    names, vectors = [], []
    for chunk in sorted(folder.glob("chunk-*.npz")):
        with np.load(chunk) as saved:
            names += saved["names"].tolist()
            vectors.append(saved["vectors"])
    return names, np.concatenate(vectors)


def threshold_sweep(label: str, out: Path, manifest: dict) -> None:
    """The same dedup and exclusion as `selfsup curate` (centring on the pool mean, the library's
    duplicate_groups / near_any) on the embeddings that the run saved, at several thresholds."""
    from selfsup.curate.dedup import duplicate_groups, near_any

    dirs = {d.name.split("-")[0]: d for d in (out / "embeddings").iterdir() if d.is_dir()}
    names, pool = load_embeddings(dirs["pool"])
    test_names, test = load_embeddings(dirs["test"])
    mean = pool.mean(axis=0)

    def centred(v):
        v = v - mean
        return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)

    pool_c, test_c = centred(pool), centred(test)
    separation(label, names, pool_c, test_names, test_c, manifest)
    for t in [0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.99]:
        groups = [sorted(names[i] for i in g) for g in duplicate_groups(pool_c, t, names=names, backend="exact")]
        excluded = {names[i] for i in np.flatnonzero(near_any(pool_c, test_c, t, "exact"))}
        r = removal_report(manifest, groups, excluded)
        emit({"what": "threshold_sweep", "encoder": label, "threshold": t,
              **{k: r[k] for k in ["removed_as_duplicates", "planted_dups_found", "planted_dups",
                                   "removed_without_a_same_source_groupmate", "distinct_images_lost",
                                   "test_copies_excluded", "test_copies", "false_exclusions"]}})


def separation(label: str, names: list[str], pool: np.ndarray, test_names: list[str], test: np.ndarray,
               manifest: dict) -> None:
    """How far apart a planted copy and an unrelated image lie (centred cosine similarity):
    each planted copy's similarity to its original, against each pool image's highest similarity
    to a pool image of another source (and the same for copies of eval/test images)."""
    row = {n: i for i, n in enumerate(names)}
    source = np.array([manifest[n]["source"] for n in names])
    sims = pool @ pool.T
    sims[source[:, None] == source[None, :]] = -2  # itself and its own planted copy
    impostor = sims.max(axis=1)
    del sims
    pct = lambda v: {f"p{q}": round(float(np.percentile(v, q)), 3) for q in (1, 5, 50, 95, 99)}  # noqa: E731
    for edit_kind in DUP_EDITS:
        pairs = [(row[n], row[m["original"]]) for n, m in manifest.items() if m["kind"] == "dup" and m["edit"] == edit_kind]
        emit({"what": "separation", "encoder": label, "pairs": f"planted copy - its original ({edit_kind})",
              **pct([float(pool[a] @ pool[b]) for a, b in pairs])})
    for kind in ["cifar", "distractor"]:
        idx = [row[n] for n, m in manifest.items() if m["kind"] == kind]
        emit({"what": "separation", "encoder": label, "pairs": f"{kind} - most similar pool image of another source",
              **pct(impostor[idx])})
    test_row = {"test/" + n: i for i, n in enumerate(test_names)}
    to_test = pool @ test.T
    copies = [(row[n], test_row[m["source"]]) for n, m in manifest.items() if m["kind"] == "testcopy"]
    emit({"what": "separation", "encoder": label, "pairs": "planted test copy - its eval/test original",
          **pct([float(to_test[a, b]) for a, b in copies])})
    others = [row[n] for n, m in manifest.items() if m["kind"] != "testcopy"]
    emit({"what": "separation", "encoder": label, "pairs": "other pool image - most similar eval/test image",
          **pct(to_test[others].max(axis=1))})


def curate(label: str, checkpoint: list[str], manifest: dict) -> list[str]:
    out = WORK / f"curated-{label}"
    shutil.rmtree(out, ignore_errors=True)
    stdout = selfsup(f"curate-{label}", "curate", "--pool", str(WORK / "pool"), "--seed-set", str(WORK / "seeds"),
                     *checkpoint, "--out", str(out), "--exclude", str(WORK / "eval" / "test"),
                     "--threshold", str(args.threshold), "--k", str(args.k), "--device", "cpu", "--json", "--no-progress")
    score(label, out, manifest, json.loads(stdout.strip().splitlines()[-1]))
    return [Path(p).name for p in (out / "curated.txt").read_text().split()]


def score(label: str, out: Path, manifest: dict, summary: dict) -> None:
    """Every count of one curation (OUT of `selfsup curate`) against the manifest."""
    groups = [line.split("\t") for line in (out / "duplicates.txt").read_text().splitlines() if line]
    excluded = set((out / "excluded.txt").read_text().split())
    curated = [Path(p).name for p in (out / "curated.txt").read_text().split()]
    emit({"what": "curation", "encoder": label, "threshold": args.threshold, "k": args.k,
          "summary": {k: summary[k] for k in ["pool", "pool_skipped", "seeds", "duplicate_groups",
                                              "removed_as_duplicates", "excluded", "retrieved"]},
          **removal_report(manifest, groups, excluded)})
    removed = {n for g in groups for n in g[1:]} | excluded
    emit({"what": "composition", "encoder": label, "set": "pool", **composition(manifest, list(manifest))})
    emit({"what": "composition", "encoder": label, "set": "pool after dedup and exclusion",
          **composition(manifest, [n for n in manifest if n not in removed])})
    emit({"what": "composition", "encoder": label, "set": "curated", **composition(manifest, curated)})
    threshold_sweep(label, out, manifest)


# ---------------------------------------------------------------------------------------------
# Pretraining and evaluation


def pretrain(name: str, data: Path, images: int, steps: int) -> Path:
    per_epoch = images // args.batch_size
    epochs = max(1, round(steps / per_epoch))
    run = WORK / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    selfsup(f"pretrain-{name}", "pretrain", "--data", str(data), "--out", str(run), "--epochs", str(epochs), *RECIPE)
    seconds = time.perf_counter() - start
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    emit({"what": "pretrain", "run": name, "data": str(data), "images": images, "epochs": epochs,
          "steps": last.get("step"), "steps_planned": epochs * per_epoch,
          "final_loss": last.get("loss"), "seconds": round(seconds, 1),
          "images_per_s": round(epochs * per_epoch * args.batch_size / seconds, 1)})
    return run / "last.pt"


def knn(name: str, checkpoint: list[str]) -> None:
    for split, data in [("eval/test", ["--data", str(WORK / "eval")]),
                        ("eval/test less planted", ["--train", str(WORK / "eval" / "train"),
                                                          "--test", str(WORK / "eval-clean" / "test")])]:
        stdout = selfsup(f"knn-{name}-{'all' if 'less' not in split else 'clean'}", "eval", "knn", *checkpoint, *data,
                         "--device", "cpu", "--no-record", "--json", "--no-progress")
        result = json.loads(stdout.strip().splitlines()[-1])
        emit({"what": "knn", "encoder": name, "test": split,
              **{k: v for k, v in result.items() if not isinstance(v, (list, dict))}})


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.unlink(missing_ok=True)
    if args.score_only:
        manifest = json.loads((WORK / "manifest.json").read_text())
        for out in sorted(WORK.glob("curated-*")):
            score(out.name[len("curated-"):], out, manifest, json.loads((out / "summary.json").read_text()))
        return
    emit({"what": "config", **vars(args), "python": sys.executable})
    start = time.perf_counter()
    manifest = build(read_cifar(args.tar))
    emit({"what": "timing", "stage": "build data", "seconds": round(time.perf_counter() - start, 1)})

    encoder = pretrain("encoder", WORK / "encoder-data", len(CLASSES) * args.encoder_per_class,
                       args.encoder_epochs * (len(CLASSES) * args.encoder_per_class // args.batch_size))
    curated = curate("simclr-encoder", ["--checkpoint", str(encoder)], manifest)
    if args.random_curation:
        curate("random", ["--checkpoint", args.random_curation, "--image-size", "32"], manifest)

    list_path = WORK / "curated-simclr-encoder" / "curated.txt"
    run_curated = pretrain("on-curated", list_path, len(curated), args.steps)
    run_pool = pretrain("on-pool", WORK / "pool", len(manifest), args.steps)
    knn("random-init", ["--checkpoint", f"random:{args.backbone}", "--image-size", "32", "--no-small-stem"])
    knn("curation-encoder", ["--checkpoint", str(encoder)])
    knn("on-curated", ["--checkpoint", str(run_curated)])
    knn("on-pool", ["--checkpoint", str(run_pool)])
    emit({"what": "timing", "stage": "total", "seconds": round(time.perf_counter() - T0, 1)})


if __name__ == "__main__":
    main()
