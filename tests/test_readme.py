"""README.md's examples run as written: its Python API block, and the command lines of its bash
blocks through the command line, on a few images cut from the CIFAR-10 sample that ships with
selfsup, in a folder laid out as the examples name it (images/, labelled/, query.png, ...).

Only what makes an example slow (epochs, batch sizes, label budgets, the backbone) is replaced,
by (old, new) pairs listed beside each example. Each old text must occur exactly once in its
block, so that a README edit fails here loudly instead of running something else in silence.
Function names, arguments and their order, commands and flags run as the README writes them."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from selfsup.cli import main

from conftest import SAMPLE

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ["airplane", "automobile", "bird"]  # of the sample's ten: labelled/ holds three


def readme_block(heading: str, language: str = "bash") -> str:
    """The first ```language block of README.md's section `heading` (a "## " line)."""
    section = README.read_text(encoding="utf-8").split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def substituted(block: str, substitutions: list[tuple[str, str]]) -> str:
    for old, new in substitutions:
        assert block.count(old) == 1, f"{old!r} occurs {block.count(old)} times in the README's block, not once"
        block = block.replace(old, new)
    return block


def command_lines(block: str) -> list[list[str]]:
    """Each command of a bash block as its arguments after `selfsup`: continuation lines joined,
    comment lines and trailing comments left out."""
    lines = [line for line in block.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]
    commands = [shlex.split(line, comments=True) for line in lines if line.strip()]
    assert all(argv[0] == "selfsup" for argv in commands), commands
    return [argv[1:] for argv in commands]


def cli(argv: list[str]) -> SimpleNamespace:
    """`selfsup ARGV` in this process (as test_cli.py runs it: no new Python importing torch)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, f"selfsup {shlex.join(argv)} exited {code}:\n{err.getvalue()}"
    return SimpleNamespace(stdout=out.getvalue(), stderr=err.getvalue())


# ---------------------------------------------------------------------------------------------
# The data the examples name, cut from the shipped sample


@pytest.fixture(scope="module")
def sample() -> dict[tuple[str, str], list[bytes]]:
    """The sample's JPEG files by (split, class), in name order; read in one pass over the tar."""
    images: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    with tarfile.open(SAMPLE, "r|*") as tar:
        for member in tar:
            if member.isfile():
                _, split, cls, name = member.name.split("/")
                images.setdefault((split, cls), []).append((name, tar.extractfile(member).read()))
    return {key: [data for _, data in sorted(files)] for key, files in images.items()}


class Cutter:
    """Hands out the sample's images, each once, into the folders an example names."""

    def __init__(self, sample):
        self.left = {key: list(files) for key, files in sample.items()}

    def take(self, split: str, cls: str) -> bytes:
        return self.left[(split, cls)].pop()

    def flat(self, folder: Path, count: int, split: str = "train") -> Path:
        """`count` images of all ten classes in turn, unlabelled: no class folders, numbered names."""
        folder.mkdir(parents=True)
        classes = sorted({cls for s, cls in self.left if s == split})
        for i in range(count):
            (folder / f"{i:03d}.jpg").write_bytes(self.take(split, classes[i % len(classes)]))
        return folder

    def by_class(self, folder: Path, per_class: int, split: str) -> Path:
        for cls in CLASSES:
            (folder / cls).mkdir(parents=True)
            for i in range(per_class):
                (folder / cls / f"{i:03d}.jpg").write_bytes(self.take(split, cls))
        return folder

    def labelled(self, root: Path, train: int, test: int) -> Path:
        """ROOT/train and ROOT/test, a subfolder per class."""
        self.by_class(root / "train", train, "train")
        self.by_class(root / "test", test, "test")
        return root

    def png(self, path: Path) -> Path:
        Image.open(io.BytesIO(self.take("test", "truck"))).save(path)
        return path


# ---------------------------------------------------------------------------------------------
# "## Python API"

PYTHON_SUBSTITUTIONS = [
    ("epochs=100", "epochs=1"),
    ("batch_size=256", "batch_size=16"),
    ('backbone="resnet18"', 'backbone="resnet18-half"'),  # a quarter of the compute; the baseline stays resnet18
    ("per_class=(1, 10, 100)", "per_class=(1,)"),  # each budget is 3 seeds x 9 probes of 100 epochs
    ('config={"epochs": 30,', 'config={"epochs": 1, "min_steps": 0,'),  # else at least 200 steps
    ("budget=200", "budget=12"),
]


def test_the_python_api_block_runs_as_written(sample, tmp_path, monkeypatch):
    cut = Cutter(sample)
    cut.flat(tmp_path / "images", 32)
    cut.labelled(tmp_path / "labelled", train=12, test=6)
    cut.png(tmp_path / "query.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    code = substituted(readme_block("## Python API", "python"), PYTHON_SUBSTITUTIONS)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    run, knn, linear, few, tuned, found, curve = (scope[name] for name in
                                                  ("run", "knn", "linear", "few", "tuned", "found", "curve"))

    # print(run.metrics[-1]): the last epoch's figures, as metrics.jsonl holds them
    assert run.metrics[-1]["epoch"] == 1 and {"loss", "lr", "images_per_s"} <= run.metrics[-1].keys()
    assert json.loads(Path("runs/simclr/metrics.jsonl").read_text().splitlines()[-1]) == run.metrics[-1]
    assert run.checkpoint == run.out / "last.pt" and run.checkpoint.is_file()
    for result in (knn, linear, few, tuned, scope["scored"]):
        assert 0 <= result["top1"] <= 1, result  # fractions in [0, 1]
        assert "top5" not in result  # three classes: top-5 would be 1 whatever the encoder
    assert few["seeds"] == 3 and "top1_std" in few and few["labels_per_class"] == 10, few
    assert {"precision@1", "precision@10", "map"} <= found.keys() and 0 <= found["map"] <= 1, found
    assert len(curve["lines"]) == 2 and curve["lines"][1]["encoder"].startswith("random:resnet18"), curve["lines"]
    assert Path(curve["plot"]).resolve() == (tmp_path / "label_efficiency.png").resolve()

    for path in ("label_efficiency.png", "report.html", "encoder.safetensors", "groups/clusters.csv",
                 "groups/clusters.png", "similar/neighbours.csv", "to-label/to_label.csv"):
        assert Path(path).is_file(), path
    embeddings = np.load("embeddings.npy")
    assert embeddings.shape[0] == len(Path("embeddings.files.txt").read_text().splitlines()) == 32
    groups, similar, chosen = scope["groups"], scope["similar"], scope["chosen"]  # sizes, outputs
    assert sum(groups["sizes"]) == 32 and len(groups["sizes"]) == 20, groups
    assert groups["outputs"]["csv"] == "groups/clusters.csv", groups
    assert similar["queries"] == 1 and similar["k"] == 8, similar
    assert chosen["pool"] == "labelled [train]" and chosen["outputs"]["csv"] == "to-label/to_label.csv", chosen
    # select_images chose from labelled/'s train/, whose labels evaluate_linear(subset=...) then takes
    with open("to-label/to_label.csv", newline="") as f:
        names = [row["file"] for row in csv.DictReader(f)]
    assert len(names) == 12 and all((tmp_path / "labelled/train" / name).is_file() for name in names), names

    encoder = scope["encoder"]  # an nn.Module: (B, 3, H, W) -> (B, D)
    assert isinstance(encoder, torch.nn.Module)
    with torch.no_grad():
        for size in (32, 24):
            assert encoder.eval()(torch.rand(2, 3, size, size)).shape == (2, embeddings.shape[1])


# ---------------------------------------------------------------------------------------------
# "## Usage", and the command lines of the sections on clusters, selection and curation

USAGE_SUBSTITUTIONS = [
    ("--backbone resnet18", "--backbone resnet18-half"),  # a quarter of the compute
    ("--epochs 200", "--epochs 1"),
    ("--batch-size 512", "--batch-size 16"),
    ("--device cuda", "--device cpu"),
    ("--freeze-stages 2", "--freeze-stages 2 --epochs 1 --min-steps 0"),  # else at least 200 steps
    # The README names a supervised resnet50.pth it cannot ship; the workspace holds torchvision's
    # resnet18 at random initialisation instead, a plain state dict all the same, and a quarter of
    # resnet50's compute at the 224 pixels a weights: file is evaluated at.
    ("weights:resnet50.pth --backbone resnet50", "weights:resnet18.pth --backbone resnet18"),
    ("--per-class 1 10 100", "--per-class 1"),  # each budget is 3 seeds x 9 probes of 100 epochs
    ("--budget 200", "--budget 12"),
    # `attention` needs a ViT; a MAE run would be a second pretraining. A random ViT-Tiny draws
    # its maps through the same command and flags.
    ("runs/mae/last.pt", "random:vit-tiny"),
]


@pytest.fixture(scope="module")
def usage(sample, tmp_path_factory):
    """A folder holding what the Usage block names, and its first two commands run there: the
    pretraining every later command uses, and the --resume of that run. The run has finished, so
    the resume says so and changes nothing (test_train.py resumes runs that were stopped)."""
    root = tmp_path_factory.mktemp("usage")
    cut = Cutter(sample)
    cut.flat(root / "images", 32)
    cut.labelled(root / "labelled", train=12, test=6)
    cut.png(root / "scan-0042.png")
    cut.flat(root / "photos", 2, split="test")
    # the Clusters and Selection sections' pools, and a dataset root to compare strategies on
    cut.flat(root / "scans", 40)
    cut.flat(root / "odd-ones", 2, split="test")
    cut.labelled(root / "cifar10", train=6, test=3)
    # the Curation section's pool (two exact copies, one leaked evaluation image) and seeds
    cut.flat(root / "raw", 40)
    shutil.copy(root / "raw/000.jpg", root / "raw/000-copy.jpg")
    shutil.copy(root / "raw/001.jpg", root / "raw/001-copy.jpg")
    shutil.copy(root / "labelled/test/bird/000.jpg", root / "raw/leaked.jpg")
    cut.flat(root / "examples", 2, split="test")
    torch.save(torchvision.models.resnet18().state_dict(), root / "resnet18.pth")

    commands = command_lines(substituted(readme_block("## Usage"), USAGE_SUBSTITUTIONS))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("SELFSUP_CACHE", str(root / "cache"))
        assert commands[0][:3] == ["pretrain", "--method", "simclr"] and "--resume" in commands[1], commands[:2]
        started = cli(commands[0])
        finished = (root / "runs/simclr/last.pt").read_bytes()
        resumed = cli(commands[1])
    assert (root / "runs/simclr/last.pt").read_bytes() == finished
    # the report's second run: a copy of the first stands for another pretraining
    shutil.copytree(root / "runs/simclr", root / "runs/other")
    return SimpleNamespace(root=root, commands=commands, started=started, resumed=resumed)


@pytest.fixture
def in_usage(usage, monkeypatch):
    """Run in the Usage folder with its cache, as one user's shell would."""
    monkeypatch.chdir(usage.root)
    monkeypatch.setenv("SELFSUP_CACHE", str(usage.root / "cache"))
    return usage


def test_the_usage_block_runs_as_written(in_usage):
    assert "resnet18-half" in in_usage.started.stderr and Path("runs/simclr/last.pt").is_file()
    assert "already finished its 1 epoch" in in_usage.resumed.stdout + in_usage.resumed.stderr, in_usage.resumed
    outputs = {}
    for argv in in_usage.commands[2:]:
        outputs[shlex.join(argv)] = cli(argv)
    linear = next(out for line, out in outputs.items() if line.startswith("eval linear") and "--json" in line)
    assert 0 <= json.loads(linear.stdout)["top1"] <= 1  # fractions in [0, 1]
    for path in ("neighbours.json", "label_efficiency.png", "report.html", "encoder.safetensors", "embeddings.npy",
                 "embeddings.files.txt", "groups/clusters.csv", "groups/clusters.png", "similar/neighbours.csv",
                 "to-label/to_label.csv"):
        assert Path(path).is_file(), path
    assert len(Path("embeddings.files.txt").read_text().splitlines()) == 32
    report = Path("report.html").read_text(encoding="utf-8")
    assert "runs/simclr" in report and "runs/other" in report
    with open("to-label/to_label.csv", newline="") as f:  # which of labelled/'s train/ to label
        assert all(Path("labelled/train", row["file"]).is_file() for row in csv.DictReader(f))
    # one PNG per image, and the overview
    assert sorted(p.name for p in Path("attention").iterdir()) == ["000.png", "001.png", "attention.png"]


def test_the_clusters_and_search_commands_run_as_written(in_usage):
    block = substituted(readme_block("## Looking through a collection: clusters and similar images"),
                        [("--clusters 20", "--clusters 2"), ("--clusters 50", "--clusters 3")])
    first, again, search = command_lines(block)
    cli(first)

    def embeddings_written():
        return {path: path.stat().st_mtime_ns for path in Path("groups/embeddings").rglob("*") if path.is_file()}

    embedded = embeddings_written()
    cli(again)
    assert embedded and embeddings_written() == embedded  # embeds nothing again
    with open("groups/clusters.csv", newline="") as f:
        assert {row["cluster"] for row in csv.DictReader(f)} == {"0", "1", "2"}
    cli(search)
    with open("similar/neighbours.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 8 and {row["query"] for row in rows} == {"000.jpg", "001.jpg"}, rows


def test_the_selection_commands_run_as_written(in_usage):
    block = substituted(readme_block("## Which images to label: `selfsup select`"),
                        [("--budget 200 --out round1/", "--budget 6 --out round1/"),
                         ("--budget 200 --out round2/", "--budget 6 --out round2/"),
                         ("--budget 40", "--budget 9")])  # to_label.png draws every image chosen
    for argv in command_lines(block):
        cli(argv)

    def chosen(folder):
        with open(Path(folder) / "to_label.csv", newline="") as f:
            return [row["file"] for row in csv.DictReader(f)]

    assert len(list(Path("round1/to_label").iterdir())) == 6  # --copy
    assert len(chosen("round2")) == 6 and not set(chosen("round1")) & set(chosen("round2"))  # never chosen again
    assert len(chosen("sel")) == 9 and all(Path("cifar10/train", name).is_file() for name in chosen("sel"))


def test_the_curation_commands_run_as_written(in_usage):
    # The README curates with a DINO run's encoder, an example of one; this folder's run is SimCLR's.
    block = substituted(readme_block("## Curating a pretraining set"), [("runs/dino/last.pt", "runs/simclr/last.pt")])
    curate, pretrain = command_lines(block)
    cli(curate)
    summary = json.loads(Path("curated/summary.json").read_text())
    listed = {Path(name).name for name in Path("curated/curated.txt").read_text().splitlines()}
    assert summary["pool"] == 43 and len(listed) == summary["retrieved"] > 0, summary
    groups = [set(line.split("\t")) for line in Path("curated/duplicates.txt").read_text().splitlines()]
    for copies in ({"000.jpg", "000-copy.jpg"}, {"001.jpg", "001-copy.jpg"}):
        assert any(copies <= group for group in groups) and len(copies & listed) <= 1, (copies, groups)
    assert "leaked.jpg" in Path("curated/excluded.txt").read_text().split() and "leaked.jpg" not in listed
    # The second line pretrains with the preset's defaults (200 epochs at 224 px), far too long
    # here: the Usage block's first command is this file's pretraining, and that pretrain's --data
    # opens such a list is tested in test_curate.py.
    assert pretrain[:6] == ["pretrain", "--method", "simclr", "--data", "curated/curated.txt", "--out"]


# ---------------------------------------------------------------------------------------------
# "## Using an exported encoder without selfsup"


def test_an_exported_encoder_loads_into_torchvision_as_the_readme_writes(tmp_path, monkeypatch):
    """The README's recipe, on a random resnet18 exported at 32 px (small stem): plain torchvision
    gives selfsup's own features."""
    from selfsup import export_encoder, load_encoder

    monkeypatch.chdir(tmp_path)
    export_encoder("random:resnet18", "encoder.safetensors", image_size=32)
    scope: dict = {}
    exec(compile(readme_block("## Using an exported encoder without selfsup", "python"), "README.md", "exec"), scope)
    x = torch.rand(2, 3, 32, 32)
    selfsups = load_encoder("random:resnet18", image_size=32).backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(x), selfsups(x))


# ---------------------------------------------------------------------------------------------
# Every example block of README.md is run here, run elsewhere, or left out for a stated reason

BLOCKS = [
    ("## Set up", "bash", "installs into a new virtual environment (minutes) and runs the 7-minute demo; .ci/run does"),
    ("## Usage", "bash", "here"),
    ("## Many GPUs and machines", "bash", "torchrun over 8 GPUs and SLURM; test_distributed.py runs torchrun on CPUs"),
    ("## Looking through a collection: clusters and similar images", "bash", "here"),
    ("## Which images to label: `selfsup select`", "bash", "here"),
    ("## Curating a pretraining set", "bash", "here"),
    ("## Python API", "python", "here"),
    ("## The arithmetic, by hand", "python", "test_reference_checks.py"),
    ("## Using an exported encoder without selfsup", "python", "here"),
    ("## Using an exported encoder without selfsup", "python", "a fragment: `batch` is the reader's; "
     "test_export.py runs an ONNX export in onnxruntime"),
    ("### Video, motion and interaction", "bash", "three more pretrainings at their presets' epochs, which no "
     "value in the block shortens; test_synth.py and test_video_methods.py run the sources and methods"),
]


def test_every_example_block_of_the_readme_is_accounted_for():
    """A block added to README.md fails here until it is run above, or the reason it is not is written."""
    found, heading = [], None
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith(("## ", "### ")):
            heading = line
        elif line in ("```bash", "```python"):
            found.append((heading, line[3:]))
    assert found == [(heading, language) for heading, language, _ in BLOCKS]
