"""The report: one self-contained HTML page, checked as a person would see it, in headless Chromium
(no console errors; its tables and images present and decoded), plus its parts."""
import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.config import merge_dicts
from selfsup.errors import UserError
from selfsup.eval import evaluate_knn, evaluate_linear, label_efficiency_curve
from selfsup.eval.record import read_evals
from selfsup.report import build_report
from selfsup.report.figures import fixed_queries, project_2d
from selfsup.train import run_pretraining

from conftest import TINY_RUN, write_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits (see test_protocols.py)


class DevTools:
    """Chromium driven over --remote-debugging-pipe: JSON messages ending in NUL, written to its
    fd 3 and read from its fd 4 (here: the child's stdin and stdout, redirected by sh)."""

    def __init__(self, timeout: float = 90):
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                 "--window-size=1280,900", "about:blank"]
        self.proc = subprocess.Popen(["sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", CHROMIUM, *flags],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TMPDIR": self.profile})  # its temporary files too
        self.deadline, self.buffer, self.events, self.last_id = time.monotonic() + timeout, b"", [], 0

    def _next_message(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, predicate) -> dict:
        while True:
            message = self._next_message()
            if predicate(message):
                return message
            self.events.append(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        answer = self.wait_for(lambda m, i=self.last_id: m.get("id") == i)
        assert "error" not in answer, answer
        return answer["result"]

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE_FACTS = """JSON.stringify({
  tables: [...document.querySelectorAll('table')].map(t => t.className),
  images: document.images.length,
  undecoded: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
  rows: document.querySelectorAll('table.comparison tbody tr').length,
  height: document.documentElement.scrollHeight})"""


def render(page: Path, screenshot: Path) -> tuple[dict, list[dict]]:
    """(facts about the rendered page, console errors and failed loads) and a screenshot."""
    browser = DevTools()
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired")
        facts = browser.call("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True}, session)
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    return json.loads(facts["result"]["value"]), errors


@requires_chromium
def test_the_devtools_check_sees_errors_and_broken_images(tmp_path):
    """The check below would notice a broken page: a script error, a console error, a missing image."""
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="missing.png" alt="gone"><script>console.error("boom"); '
                    'throw new Error("x")</script></body></html>')
    facts, errors = render(page, tmp_path / "broken.png")
    assert facts["undecoded"] == ["gone"]
    assert {e["method"] for e in errors} == {"Runtime.exceptionThrown", "Runtime.consoleAPICalled", "Log.entryAdded"}


def pretrained_run(out: Path, data: Path) -> Path:
    run_pretraining(merge_dicts(TINY_RUN, {"out": str(out), "data": {"path": str(data)},
                                           "train": {"epochs": 2, "monitor_every_epochs": 1}}))
    return out


def data_uris_only(text: str) -> None:
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    for link in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert link.startswith(("data:", "#")), link
    for uri in re.findall(r'<img src="data:image/png;base64,([^"]+)"', text):
        Image.open(io.BytesIO(base64.b64decode(uri))).verify()


@requires_chromium
def test_report_of_two_runs_renders_with_its_tables_and_images(tmp_path, split_folder):
    run = pretrained_run(tmp_path / "simclr", split_folder)
    common = dict(data=split_folder, device="cpu", show_progress=False)
    evaluate_knn(run, k=(5,), **common)
    evaluate_linear(run / "last.pt", per_class=4, seeds=2, epochs=3, lr=1e-2, weight_decay=0.0, **common)
    evaluate_linear(run, epochs=3, lr=1e-2, weight_decay=0.0, record=False, **common)
    label_efficiency_curve([run, "random:resnet18"], protocol="knn", per_class=(1, 4), seeds=2, image_size=16,
                           small_stem=False, out=tmp_path / "curve.png", protocol_options={"k": (5,)}, **common)
    evals = read_evals(run)
    assert [(e["protocol"], e.get("budget")) for e in evals] == [("knn", "all labels"), ("linear", "4 per class"),
                                                                 ("curve", None)]
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(run / "reconstructions.png")  # a method's picture
    other = tmp_path / "copy" / "simclr"
    shutil.copytree(run, other)
    out = build_report([run, other], tmp_path / "site" / "report.html", device="cpu", show_progress=False)
    text = out.read_text()
    data_uris_only(text)
    for heading in ("Comparison", "Configuration", "Training curves", "Evaluations", "Label efficiency",
                    "Nearest neighbours", "Embedding map", "Pictures from the method"):
        assert f">{heading}<" in text
    facts, errors = render(out, tmp_path / "screenshot.png")
    assert errors == []
    assert facts["tables"] == ["comparison"] + ["config", "evals"] * 2
    assert facts["rows"] == 3  # the two runs, and the random: baseline of their curve
    assert facts["images"] == 10 and facts["undecoded"] == []  # per run: curves, curve, neighbours, map, picture
    shot = np.asarray(Image.open(tmp_path / "screenshot.png").convert("L"))
    assert shot.shape[1] == 1280 and shot.shape[0] > 600 and shot.std() > 10 and facts["height"] > 4000


def test_report_notes_what_it_cannot_draw_and_refuses_non_runs(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"method: simclr\ndata:\n  path: {tmp_path / 'gone'}\n")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 3.0, "lr": 0.1}) + "\n")
    (run / "attention").mkdir()  # e.g. selfsup attention --out RUN/attention
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(run / "attention" / "cat.png")
    text = build_report([run], tmp_path / "r.html", show_progress=False).read_text()
    data_uris_only(text)
    assert "no labelled data" in text and "no evaluations recorded" in text and "no label-efficiency curve" in text
    assert text.count("<img") == 2 and "attention/cat.png" in text  # the training curves, the attention map
    with pytest.raises(UserError, match="not a run folder"):
        build_report([tmp_path / "gone"], tmp_path / "r.html")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("selfsup: error: ") and "not a run folder" in err
    assert err.endswith(f"it holds runs: give them (e.g. {run})")  # a folder of runs, given for one
    from selfsup.report.build import _check_run
    (run / "last.pt").write_bytes(b"")
    assert _check_run(run / "last.pt") == run  # a checkpoint, as every other command takes: its run
    with pytest.raises(UserError, match=r"^out='.*r.png' must end in .html, or name a folder \(end it in '/'\) "
                                        r"to write report.html in$"):
        build_report([run], tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_what_cannot_be_used_in_the_labelled_data_is_said_once(tmp_path, split_folder, capsys):
    """A dangling link in the run's own data, or in --data given for two runs: one warning, where
    the run's data was listed twice (is it a root of train/ and test/? then to evaluate) and the data
    given once per run."""
    run = tmp_path / "simclr"
    run_pretraining(merge_dicts(TINY_RUN, {"out": str(run), "data": {"path": str(split_folder)},
                                           "train": {"epochs": 1}}))
    (split_folder / "test" / "circle" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    capsys.readouterr()
    build_report([run], tmp_path / "a.html", device="cpu", show_progress=False)
    assert capsys.readouterr().err.count("warning: left out 1 file or folder") == 1
    other = tmp_path / "copy" / "simclr"
    shutil.copytree(run, other)
    build_report([run, other], tmp_path / "b.html", data=split_folder, device="cpu", show_progress=False)
    assert capsys.readouterr().err.count("warning: left out 1 file or folder") == 1


def test_a_command_says_once_what_is_wrong_with_the_data_it_reads_for_each_run(tmp_path, capsys):
    """`report` of two runs, and `eval` with one folder as --train and --test, read the same labelled
    data for each run and each split: the file skipped in it was said each time (four times in the
    report). Once a command now, as is that the test images are the training images; what concerns
    each run (pretrained on the test images) is still said for each."""
    data = write_dataset(tmp_path / "labelled", per_class=4)
    (data / "circle" / "notes.png").write_text("not an image")
    run = tmp_path / "a"
    run_pretraining(merge_dicts(TINY_RUN, {"out": str(run), "data": {"path": str(data)}, "train": {"epochs": 1}}))
    other = shutil.copytree(run, tmp_path / "b")
    capsys.readouterr()
    same_data = ["--train", str(data), "--test", str(data), "--no-progress"]
    assert main(["report", str(run), str(other), "--out", str(tmp_path / "r.html"), *same_data]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: skipped 1 of 13 files") == 1, err
    assert err.count("warning: the test images are the training images") == 1, err
    assert err.count("was pretrained on the test images") == 2, err
    assert main(["eval", "knn", "--checkpoint", str(run), "--k", "3", "--no-record", *same_data]) == 0
    assert capsys.readouterr().err.count("warning: skipped 1 of 13 files") == 1

def test_embedding_map_falls_back_to_pca_that_keeps_planar_distances(monkeypatch):
    for name in ("sklearn", "sklearn.manifold"):  # as if scikit-learn were not installed
        monkeypatch.setitem(sys.modules, name, None)
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 2, generator=g, dtype=torch.float64))[0].T  # (2, 32) orthonormal
    x = torch.randn(50, 2, generator=g, dtype=torch.float64) @ basis
    coords, method = project_2d(x)
    unit = torch.nn.functional.normalize(x, dim=1)  # the map shows cosine geometry
    assert method.startswith("PCA")
    np.testing.assert_allclose(torch.cdist(torch.from_numpy(coords), torch.from_numpy(coords)).numpy(),
                               torch.cdist(unit, unit).numpy(), atol=1e-6)


def test_embedding_map_by_tsne_keeps_clusters_apart():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 32, generator=g, dtype=torch.float64)
    labels = torch.arange(60) % 3
    x = centres[labels] + 0.05 * torch.randn(60, 32, generator=g, dtype=torch.float64)
    coords, method = project_2d(x)
    assert method == "t-SNE" and coords.shape == (60, 2)
    distances = torch.cdist(torch.from_numpy(coords), torch.from_numpy(coords)).fill_diagonal_(float("inf"))
    assert (labels[distances.argmin(dim=1)] == labels).all()  # each point's nearest neighbour on the map: its cluster


def test_fixed_queries_take_each_class_in_turn():
    labels = np.array([2, 0, 0, 1, 2, 0, 1])
    assert fixed_queries(labels, 5).tolist() == [1, 3, 0, 2, 6]
    assert fixed_queries(labels, 50).tolist() == [1, 3, 0, 2, 6, 4, 5]


def fake_run(folder: Path, evals: list[dict]) -> Path:
    """A run folder with a config, one line of metrics and the given evaluation records."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("method: simclr\nbackbone:\n  name: resnet18\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 3.0, "lr": 0.1}) + "\n")
    (folder / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    return folder


def test_report_options_and_out_are_checked_before_the_work(tmp_path, monkeypatch, capsys):
    import selfsup.report.build

    run = fake_run(tmp_path / "run", [])
    monkeypatch.setattr(selfsup.report.build, "_run_section", lambda *a: pytest.fail("the work began"))
    (tmp_path / "file").write_text("")
    # Named as given from Python (queries=), not by a config path (report.queries) no one typed.
    for options, message in [(dict(queries=0), "^queries= must be in [1, inf], got 0"),
                             (dict(queries=-2), "^queries= must be in [1, inf], got -2"),
                             (dict(max_points=1), "^max_points= must be in [3, inf], got 1"),
                             (dict(neighbours=0), "^neighbours= must be in [1, inf], got 0"),
                             (dict(queries="6"), "^queries= must be int, got '6'"),
                             (dict(out=tmp_path / "r.txt"), "must end in .html, or name a folder"),
                             (dict(out=tmp_path / "file" / "r.html"), f"cannot create {str(tmp_path / 'file')!r}")]:
        anchored = message.startswith("^")  # the whole message, from its start
        with pytest.raises(UserError, match="^" * anchored + re.escape(message.removeprefix("^"))):
            build_report([run], **{"out": tmp_path / "r.html", **options})
    for args, message in [(["--queries", "0"], "--queries must be in [1, inf], got 0"),
                          (["--max-points", "0"], "--max-points must be in [3, inf], got 0"),
                          (["--out", str(tmp_path / "file" / "r.html")], "cannot create")]:
        assert main(["report", str(run), "--out", str(tmp_path / "r.html"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"selfsup: error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run"]  # nothing written, no temporary file


def test_embedding_map_of_too_few_test_images_is_a_note():
    from selfsup.report.build import _embedding_map

    x, labels = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), np.array([0, 1, 1])
    for n in (1, 2):
        assert "a 2-D map needs at least 3" in _embedding_map(x[:n], labels[:n], ["a", "b"], {"max_points": 2000})
    assert _embedding_map(x, labels, ["a", "b"], {"max_points": 3}).startswith("<figure><img")


def test_comparison_keeps_results_on_other_data_or_k_in_other_columns(tmp_path):
    from selfsup.report.tables import comparison_rows

    def knn(top1, test, k=200, train=None, budget="all labels"):
        return {"protocol": "knn", "budget": budget, "k": k, "top1": top1, "test_data": test,
                "train_data": train or test.replace("/test", "/train")}

    cifar, stl = "/d/cifar/test", "/d/stl/test"
    a = fake_run(tmp_path / "a", [knn(0.5, cifar), knn(0.6, cifar), knn(0.3, stl), knn(0.4, cifar, k=20)])
    b = fake_run(tmp_path / "b", [knn(0.7, stl), knn(0.8, cifar, train="/d/cifar-5k/train"),
                                  knn(0.2, cifar, budget="4 per class")])
    headers, rows = comparison_rows([a, b], ["a", "b"])
    figures = {h: (ra, rb) for h, ra, rb in zip(headers, *rows) if h.startswith("knn")}
    assert figures == {  # one column per protocol, k, budget and data; the latest result of each
        f"knn k=200 (all labels) on {cifar}, labels from /d/cifar/train": (0.6, None),
        f"knn k=200 (all labels) on {stl}": (0.3, 0.7),
        f"knn k=20 (all labels) on {cifar}": (0.4, None),
        f"knn k=200 (all labels) on {cifar}, labels from /d/cifar-5k/train": (None, 0.8),
        f"knn k=200 (4 per class) on {cifar}": (None, 0.2)}


def test_comparison_keeps_other_image_sizes_and_settings_apart(tmp_path):
    # A result at another image size, or with a protocol setting changed, is another column; the
    # defaults (and records from before image_size was written) name neither.
    from selfsup.report.tables import comparison_rows, eval_rows

    test = "/d/cifar [test]"

    def result(protocol, top1, **extra):
        return {"protocol": protocol, "budget": "all labels", "top1": top1, "test_data": test,
                "train_data": "/d/cifar [train]", **extra}

    a = fake_run(tmp_path / "a", [
        result("knn", 0.30, k=200, temperature=0.07, image_size=32),
        result("knn", 0.31, k=200, temperature=0.07, image_size=64),
        result("knn", 0.29, k=200, temperature=0.1, image_size=32),
        result("knn", 0.25, k=200, temperature=0.07),
        result("linear", 0.40, epochs=100, image_size=32),
        result("linear", 0.35, epochs=20, image_size=32),
        result("finetune", 0.45, image_size=32, config={"epochs": 30, "crop_scale": [0.25, 1.0]}),
        result("finetune", 0.47, image_size=32, config={"epochs": 5, "crop_scale": [0.25, 1.0]})])
    headers, rows = comparison_rows([a], ["a"])
    figures = {h.split(" on ")[0]: v for h, v in zip(headers, rows[0]) if " on " in h}
    assert figures == {"knn k=200 (all labels, 32 px)": 0.30, "knn k=200 (all labels, 64 px)": 0.31,
                       "knn k=200 (all labels, 32 px, T=0.1)": 0.29, "knn k=200 (all labels)": 0.25,
                       "linear (all labels, 32 px)": 0.40, "linear (all labels, 32 px, epochs 20)": 0.35,
                       "finetune (all labels, 32 px)": 0.45, "finetune (all labels, 32 px, epochs 5)": 0.47}
    from selfsup.report.tables import EVAL_HEADERS
    first = dict(zip(EVAL_HEADERS, eval_rows([result("linear", 0.35, epochs=20, image_size=32)])[0]))
    assert first["image size"] == "32 px" and first["other"] == "epochs 20"


def test_a_test_set_replaced_in_place_is_another_column(tmp_path, split_folder):
    # Two kNN results on D/test, the folder's images replaced between them, shared one column
    # "knn k=5 (all labels, 16 px) on D/test": the records' pixel digests now tell them apart.
    from conftest import write_dataset
    from selfsup.report.tables import comparison_rows

    run = pretrained_run(tmp_path / "run", split_folder)
    common = dict(data=split_folder, k=(5,), device="cpu", show_progress=False)
    evaluate_knn(run, **common)
    shutil.rmtree(split_folder / "test")
    write_dataset(split_folder / "test", per_class=6, seed=3)  # other images, same names
    evaluate_knn(run, **common)
    first, second = read_evals(run)
    assert first["test_pixels_sha256"] != second["test_pixels_sha256"]
    headers, [row] = comparison_rows([run], ["run"])
    figures = {h: v for h, v in zip(headers, row) if h.startswith("knn")}
    test, when = split_folder / "test", [r["time"].replace("T", " ")[:16] for r in (first, second)]
    assert figures == {
        f"knn k=5 (all labels, 16 px) on {test} (images as of {when[0]}, sha256 {first['test_pixels_sha256'][:8]})":
            first["top1"],
        f"knn k=5 (all labels, 16 px) on {test} (images as of {when[1]}, sha256 {second['test_pixels_sha256'][:8]})":
            second["top1"]}


def test_columns_of_other_images_name_them_and_older_records_keep_their_column(tmp_path):
    from selfsup.report.tables import comparison_rows

    def knn(top1, time, test_pixels=None, train_pixels=None):
        digests = {"test_pixels_sha256": test_pixels, "train_pixels_sha256": train_pixels} if test_pixels else {}
        return {"protocol": "knn", "budget": "all labels", "k": 200, "top1": top1, "time": time,
                "test_data": "/d/test", "train_data": "/d/train", **digests}

    a = fake_run(tmp_path / "a", [knn(0.5, "2026-01-02T10:00:00", "a" * 64, "c" * 64)])
    b = fake_run(tmp_path / "b", [knn(0.6, "2026-01-01T09:00:00", "a" * 64, "d" * 64)])
    c = fake_run(tmp_path / "c", [knn(0.7, "2026-02-01T09:00:00", "b" * 64, "c" * 64)])
    old = fake_run(tmp_path / "old", [knn(0.8, "2025-01-01T09:00:00")])
    headers, rows = comparison_rows([a, b, c, old], ["a", "b", "c", "old"])
    assert {h: [r[i] for r in rows] for i, h in enumerate(headers) if h.startswith("knn")} == {
        "knn k=200 (all labels) on /d/test (images as of 2026-01-01 09:00, sha256 aaaaaaaa), labels from "
        "/d/train (images as of 2026-01-02 10:00, sha256 cccccccc)": [0.5, None, None, None],
        "knn k=200 (all labels) on /d/test (images as of 2026-01-01 09:00, sha256 aaaaaaaa), labels from "
        "/d/train (images as of 2026-01-01 09:00, sha256 dddddddd)": [None, 0.6, None, None],
        "knn k=200 (all labels) on /d/test (images as of 2026-02-01 09:00, sha256 bbbbbbbb)": [None, None, 0.7, None],
        "knn k=200 (all labels) on /d/test (images not recorded: an older eval)": [None, None, None, 0.8]}
    headers, rows = comparison_rows([old, old], ["old", "again"])  # records without digests: as before
    assert headers[-1] == "knn k=200 (all labels) on /d/test" and [r[-1] for r in rows] == [0.8, 0.8]


def test_comparison_says_what_each_run_was_trained_at(tmp_path):
    # Image size, batch size, preset and a ViT's patch size were missing: two runs looked alike.
    from selfsup.config import dump_yaml, resolve
    from selfsup.report.tables import comparison_rows

    vit = fake_run(tmp_path / "vit", [])
    (vit / "config.yaml").write_text(dump_yaml(resolve({"method": "dino", "backbone": {"name": "vit-small"},
                                                        "data": {"image_size": 32, "path": "/d/unlabelled"},
                                                        "train": {"batch_size": 64}})))
    resnet = fake_run(tmp_path / "resnet", [])
    (resnet / "config.yaml").write_text(dump_yaml(resolve({"method": "simclr", "preset": "imagenet",
                                                           "data": {"image_size": 64}})))
    headers, rows = comparison_rows([vit, resnet, fake_run(tmp_path / "bare", [])], ["vit", "resnet", "bare"])
    assert headers == ["run", "method", "backbone", "preset", "image size", "batch size", "epochs", "pretraining data",
                       "final loss", "online kNN", "online kNN on"]
    assert [r[:6] for r in rows] == [["vit", "dino", "vit-small/4", "cifar-vit", 32, 64],
                                     ["resnet", "simclr", "resnet50", "imagenet", 64, 256],
                                     ["bare", "simclr", "resnet18", None, None, None]]
    # Nor did the images pretrained on: a run on 600 images beside one on 260 read as alike.
    assert [r[headers.index("pretraining data")] for r in rows] == ["/d/unlabelled", None, None]
    # Nor what the kNN monitor read: a held-out part of the run's images, or --monitor-data's.
    with open(vit / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"epoch": 2, "loss": 2.0, "knn_top1": 0.5}) + "\n")
    with open(resnet / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"epoch": 2, "loss": 2.0, "knn_top1": 0.4}) + "\n")
    (resnet / "config.yaml").write_text(dump_yaml(resolve({"method": "simclr", "data": {"monitor_path": "/d/few"}})))
    headers, rows = comparison_rows([vit, resnet, tmp_path / "bare"], ["vit", "resnet", "bare"])
    assert [r[-2:] for r in rows] == [[0.5, "held-out images"], [0.4, "/d/few"], [None, None]]


def test_report_cells_keep_small_values_exact():
    from selfsup.report.html import number
    assert number(0.00015) == "0.00015" and number(5e-4) == "0.0005" and number(1e-6) == "1e-06"
    assert number(0.30700001) == "0.3070" and number(5.2907) == "5.2907" and number(0.0) == "0.0000"


def test_settings_seeds_and_one_test_set_named_two_ways_make_the_columns(tmp_path):
    # --val-fraction 0.3, --batch-size 16 and --seeds 3 each shared the default's column; the same
    # test set given as --data (".../cifar [test]") or --test (".../cifar/test") had two.
    from selfsup.report.tables import comparison_rows

    def linear(top1, test="/d/cifar/test", **extra):
        return {"protocol": "linear", "budget": "4 per class", "image_size": 32, "top1": top1, "test_data": test,
                "train_data": test.replace("test", "train"), "seeds": 1, **extra}

    a = fake_run(tmp_path / "a", [linear(0.40, "/d/cifar [test]"), linear(0.30, val_fraction=0.3),
                                  linear(0.31, batch_size=16), linear(0.35, seeds=3),
                                  linear(0.41, val_fraction=0.1, batch_size=1024)])
    headers, rows = comparison_rows([a], ["a"])
    from selfsup.eval.record import data_name, is_current
    assert data_name("/d/scans [2019]") == "/d/scans [2019]"  # a folder's own name, not a split
    assert data_name("/d/scans [val]") == "/d/scans/val" and data_name("/d/c.tar [test]") == "/d/c.tar [test]"
    # A run whose last.pt is gone (removed to save space) keeps its results
    assert is_current({"checkpoint_sha256": "a"}, None) and not is_current({"checkpoint_sha256": "a"}, "b")
    assert {h: v for h, v in zip(headers, rows[0]) if " on " in h} == {
        "linear (4 per class, 32 px) on /d/cifar/test": 0.41,
        "linear (4 per class, 32 px, val fraction 0.3) on /d/cifar/test": 0.30,
        "linear (4 per class, 32 px, batch size 16) on /d/cifar/test": 0.31,
        "linear (4 per class, 32 px, 3 seeds) on /d/cifar/test": 0.35}


def test_curve_points_are_figures_in_the_comparison_beside_single_evaluations_and_baselines_are_rows(tmp_path):
    # Curve points never entered the comparison table, nor did the random: baseline drawn beside
    # the runs. A point is the figure a single evaluation at its budget gives: one column; each
    # baseline is a row, named with its seed.
    from selfsup.report.tables import comparison_rows

    data = {"test_data": "/d/test", "train_data": "/d/train", "test_pixels_sha256": "t" * 64,
            "train_pixels_sha256": "u" * 64}

    def point(per_class, top1, k=None, seeds=3):
        return {"budget": f"{per_class} per class", "top1": top1, "seeds": seeds, **({"k": k} if k else {}),
                "per_seed": [{"top1": top1, "seed": s} for s in range(seeds)]}

    def line(spec, *points, size=32, **extra):
        return {"encoder": f"{spec} (random initialisation, seed 0)" if spec.startswith("random:") else spec,
                "checkpoint": spec, "image_size": size, "points": list(points), **extra}

    def curve(time, own, lines, protocol="linear", **extra):
        return {"protocol": "curve", "curve_protocol": protocol, "seeds": 3, "time": time, "checkpoint": own,
                "lines": lines, **data, **extra}

    a, b = tmp_path / "a", tmp_path / "b"
    linear = {"protocol": "linear", "budget": "10 per class", "image_size": 32, "seeds": 3, **data}
    random = line("random:resnet18", point(1, 0.11), point(10, 0.21), init_seed=0, encoder_weights_sha256="r" * 64)
    fake_run(a, [{**linear, "top1": 0.5, "time": "2026-01-01T00:00:00"},
                 curve("2026-01-02T00:00:00", str(a), [line(str(a), point(1, 0.3), point(10, 0.6)),
                                                       line(str(b), point(1, 0.9), point(10, 0.9)), random]),
                 curve("2026-01-03T00:00:00", str(a), [line(str(a), point(1, 0.4, k=3), point(10, 0.7, k=30),
                                                       {**point(16, 0.75, k=48, seeds=1), "budget": "all labels"})],
                       protocol="knn", temperature=0.1),
                 curve("2026-01-03T00:00:00", str(a), [line(str(a), point(1, 0.8))], protocol="knn")])  # no k: older
    fake_run(b, [{**linear, "top1": 0.55, "time": "2026-01-04T00:00:00"},
                 curve("2026-01-05T00:00:00", str(b), [line(str(b), point(1, 0.35)),
                                                       line("random:resnet18", point(1, 0.12), init_seed=0,
                                                            encoder_weights_sha256="r" * 64)])])
    headers, rows = comparison_rows([a, b], ["a", "b"])
    table = {h: [r[i] for r in rows] for i, h in enumerate(headers) if " on " in h}
    assert table == {"linear (10 per class, 32 px, 3 seeds) on /d/test": [0.6, 0.55, 0.21],
                     "linear (1 per class, 32 px, 3 seeds) on /d/test": [0.3, 0.35, 0.12],
                     "knn k=3 (1 per class, 32 px, 3 seeds, T=0.1) on /d/test": [0.4, None, None],
                     "knn k=30 (10 per class, 32 px, 3 seeds, T=0.1) on /d/test": [0.7, None, None],
                     "knn k=48 (all labels, 32 px, T=0.1) on /d/test": [0.75, None, None]}  # run once
    assert [r[:5] for r in rows] == [["a", "simclr", "resnet18", None, None], ["b", "simclr", "resnet18", None, None],
                                     ["random:resnet18 (random initialisation, seed 0)", "random init", "resnet18",
                                      None, 32]]
    # A baseline drawn otherwise (another seed or torch: other weights) is another row, told apart.
    fake_run(tmp_path / "c", [curve("2026-01-06T00:00:00", "x", [line("random:resnet18", point(1, 0.13),
                                                                      encoder_weights_sha256="s" * 64)])])
    _, rows = comparison_rows([a, tmp_path / "c"], ["a", "c"])
    assert [r[0] for r in rows[2:]] == ["random:resnet18 (random initialisation, seed 0), weights sha256 rrrrrrrr",
                                        "random:resnet18 (random initialisation, seed 0), weights sha256 ssssssss"]


def test_baselines_of_other_seeds_or_files_are_other_rows_and_one_draw_is_one_row(tmp_path):
    """random:resnet18@seed=1 is another baseline than random:resnet18 (seed 0), which is the same
    as random:resnet18@seed=0; a weights: file replaced under the same name is another baseline,
    told apart by its file's SHA-256 (its rows had been merged into one)."""
    from selfsup.report.tables import comparison_rows

    data = {"test_data": "/d/test", "train_data": "/d/train"}

    def line(spec, top1, **identity):
        seed = identity.get("init_seed")
        encoder = f"random:resnet18 (random initialisation, seed {seed})" if seed is not None else \
            "resnet18 weights (w.safetensors)"
        return {"encoder": encoder, "checkpoint": spec, "image_size": 32, **identity,
                "points": [{"budget": "1 per class", "top1": top1, "seeds": 1}]}

    def curve(time, *lines):
        return {"protocol": "curve", "curve_protocol": "linear", "seeds": 1, "time": time, "checkpoint": "x",
                "lines": list(lines), **data}

    fake_run(tmp_path / "a", [
        curve("2026-01-01T00:00:00", line("random:resnet18", 0.10, init_seed=0, encoder_weights_sha256="r" * 64),
              line("random:resnet18@seed=1", 0.12, init_seed=1, encoder_weights_sha256="s" * 64),
              line("weights:/w.safetensors", 0.50, weights_file_sha256="f" * 64)),
        curve("2026-01-02T00:00:00", line("random:resnet18@seed=0", 0.11, init_seed=0,
                                          encoder_weights_sha256="r" * 64),
              line("weights:/w.safetensors", 0.60, weights_file_sha256="g" * 64))])
    headers, rows = comparison_rows([tmp_path / "a"], ["a"])
    column = headers.index("linear (1 per class, 32 px) on /d/test")
    assert [(r[0], r[2], r[column]) for r in rows[1:]] == [
        ("random:resnet18 (random initialisation, seed 0)", "resnet18", 0.11),  # the latest of the one draw
        ("random:resnet18 (random initialisation, seed 1)", "resnet18", 0.12),
        ("resnet18 weights (w.safetensors), file sha256 ffffffff", "resnet18", 0.50),
        ("resnet18 weights (w.safetensors), file sha256 gggggggg", "resnet18", 0.60)]


def test_baselines_of_one_name_are_named_by_what_differs_and_one_file_under_two_paths_is_one_row(tmp_path):
    """Two rows of one name were told apart by a digest only: random: draws at two image sizes or
    with other bands had the same weights' digest and so the same name, and one file under two
    paths had the same file digest. Each is now named by what differs; a file whose lines hold
    the network's weights' digest is one row under any path, and an older line's keeps its path."""
    from selfsup.report.tables import comparison_rows

    data = {"test_data": "/d/test", "train_data": "/d/train"}

    def line(spec, top1, size=32, **identity):
        encoder = "random:resnet18 (random initialisation, seed 0)" if spec.startswith("random:") else \
            "resnet18 weights (w.safetensors)"
        return {"encoder": encoder, "checkpoint": spec, "image_size": size, **identity,
                "points": [{"budget": "1 per class", "top1": top1, "seeds": 1}]}

    def curve(time, *lines):
        return {"protocol": "curve", "curve_protocol": "linear", "seeds": 1, "time": time, "checkpoint": "x",
                "lines": list(lines), **data}

    drawn = dict(init_seed=0, encoder_weights_sha256="r" * 64)
    fake_run(tmp_path / "a", [curve("2026-01-01T00:00:00", line("random:resnet18", 0.10, **drawn),
                                    line("random:resnet18", 0.11, size=64, **drawn),
                                    line("random:resnet18", 0.12, bands=[4, 3, 2], **drawn),
                                    line("weights:/a/w.safetensors", 0.50, weights_file_sha256="f" * 64),
                                    line("weights:/b/w.safetensors", 0.51, weights_file_sha256="f" * 64))])
    _, rows = comparison_rows([tmp_path / "a"], ["a"])
    assert [r[0] for r in rows[1:]] == [
        "random:resnet18 (random initialisation, seed 0), at 32 px, bands 1,2,3",
        "random:resnet18 (random initialisation, seed 0), at 64 px, bands 1,2,3",
        "random:resnet18 (random initialisation, seed 0), at 32 px, bands 4,3,2",
        "resnet18 weights (w.safetensors), weights:/a/w.safetensors",  # how each path was loaded is not known
        "resnet18 weights (w.safetensors), weights:/b/w.safetensors"]

    loaded = dict(weights_file_sha256="f" * 64, encoder_weights_sha256="e" * 64)
    fake_run(tmp_path / "b", [curve("2026-01-01T00:00:00", line("weights:/a/w.safetensors", 0.50, **loaded),
                                    line("weights:/a/w.safetensors", 0.40, size=64, **loaded)),
                              curve("2026-01-02T00:00:00", line("weights:/b/w.safetensors", 0.52, **loaded),
                                    line("weights:/b/w.safetensors", 0.30, weights_file_sha256="f" * 64,
                                         encoder_weights_sha256="s" * 64))])  # loaded with another stem
    headers, rows = comparison_rows([tmp_path / "b"], ["b"])
    column = headers.index("linear (1 per class, 32 px) on /d/test")
    assert [(r[0], r[column]) for r in rows[1:]] == [
        ("resnet18 weights (w.safetensors), at 32 px, weights sha256 eeeeeeee", 0.52),  # the latest, of /b
        ("resnet18 weights (w.safetensors), at 64 px, weights sha256 eeeeeeee", None),
        ("resnet18 weights (w.safetensors), at 32 px, weights sha256 ssssssss", 0.30)]


def test_the_report_draws_the_latest_curve_of_each_protocol_and_settings_of_the_current_checkpoint():
    """A curve with other settings (a linear probe of 20 epochs, kNN at T=0.1) is another curve, not
    a newer one of the defaults'; a curve of a checkpoint the run has moved on from is left out.
    Records from before checkpoints had a digest count as current."""
    from selfsup.eval.record import is_current
    from selfsup.report.tables import latest_curves

    def curve(protocol, n, **extra):
        return {"protocol": "curve", "curve_protocol": protocol, "n": n, "seeds": 1, **extra}

    evals = [curve("linear", 1), curve("linear", 2, epochs=100), curve("linear", 3, epochs=20),
             curve("knn", 4, temperature=0.1), curve("knn", 5, current=False)]
    assert [c["n"] for c in latest_curves(evals)] == [2, 3, 4]
    assert is_current({"protocol": "knn"}, "b" * 64)


def test_a_curve_on_other_data_or_images_is_drawn_beside_the_others_and_named_by_them():
    # The latest curve of a protocol hid an earlier one on other data, or on the same folder's
    # images before they were replaced: as a column of the comparison, a curve is of its data.
    from selfsup.report.tables import curve_titles, latest_curves

    def curve(n, test, pixels, train="/d/train"):
        return {"protocol": "curve", "curve_protocol": "knn", "n": n, "seeds": 1, "test_data": test,
                "train_data": train, "test_pixels_sha256": pixels, "train_pixels_sha256": "c" * 64}

    evals = [curve(1, "/d/test", "a" * 64), curve(2, "/e/test", "a" * 64), curve(3, "/d/test", "b" * 64),
             curve(4, "/d/test", "b" * 64), curve(5, "/e/test", "a" * 64, train="/e/train")]
    shown = latest_curves(evals)
    assert [c["n"] for c in shown] == [1, 2, 4, 5]
    assert curve_titles(shown) == ["knn on /d/test (images sha256 aaaaaaaa)", "knn on /e/test, labels from /d/train",
                                   "knn on /d/test (images sha256 bbbbbbbb)", "knn on /e/test, labels from /e/train"]
    assert curve_titles(latest_curves(evals[:1])) == ["knn on /d/test"]


def test_a_curve_leaves_out_the_lines_of_runs_that_trained_on(tmp_path, split_folder):
    # `eval curve --checkpoint A B` records both lines into each run; B then trained on in its
    # folder: A's section still drew B's old line, under B's name. Each line is now checked
    # against its own run's last.pt.
    from selfsup.report import tables
    from selfsup.report.build import _label_efficiency

    a, b = pretrained_run(tmp_path / "a", split_folder), pretrained_run(tmp_path / "b", split_folder)
    label_efficiency_curve([a, b], data=split_folder, protocol="knn", per_class=(1, 4), seeds=1, device="cpu",
                           show_progress=False, out=tmp_path / "curve.png", protocol_options={"k": (5,)})
    drawn = _label_efficiency(tables.run_evals(a))
    assert "not last.pt now" not in drawn and f"<figcaption>knn on {split_folder / 'test'}</figcaption>" in drawn
    checkpoint = torch.load(b / "last.pt", weights_only=True)  # B trains on
    checkpoint["position"]["epoch"] += 1
    torch.save(checkpoint, b / "last.pt")
    assert tables.latest_curves(tables.run_evals(b)) == []  # B's own section: not its curve now (as before)
    [curve] = tables.latest_curves(tables.run_evals(a))
    assert f"left out (not last.pt now): {curve['lines'][1]['encoder']}" in _label_efficiency(tables.run_evals(a))
    shown, stale = tables.current_lines(curve)
    assert [line["checkpoint"] for line in shown["lines"]] == [str(a)] and stale == [curve["lines"][1]["encoder"]]
    # Lines now name their run folder, whole; older records' are found by the checkpoint's path,
    # else counted as current.
    assert [line["run_dir"] for line in read_evals(a)[-1]["lines"]] == [str(a.resolve()), str(b.resolve())]
    older = {"checkpoint": "x", "current": True, "lines": [{"checkpoint": str(b), "checkpoint_sha256": "0" * 64},
                                                           {"checkpoint": "gone", "checkpoint_sha256": "0" * 64}]}
    assert [line["current"] for line in tables._lines_marked(older)] == [False, True]


def test_a_curve_records_each_run_with_its_own_images_so_its_points_join_the_runs_columns(tmp_path, split_folder):
    # A curve of runs trained at 16 and 24 px recorded the last encoder's pixel digests (its
    # images at 24 px) into every run: the 16 px run's points were on "other images" than its
    # own kNN at the same budget, a column apart. Each run's record now holds its own line's.
    from selfsup.report.tables import comparison_rows

    a = pretrained_run(tmp_path / "a", split_folder)
    b = tmp_path / "b"
    run_pretraining(merge_dicts(TINY_RUN, {"out": str(b), "data": {"path": str(split_folder), "image_size": 24},
                                           "train": {"epochs": 1}}))
    common = dict(data=split_folder, device="cpu", show_progress=False)
    curve = label_efficiency_curve([a, b], protocol="knn", per_class=(2,), seeds=1, out=tmp_path / "c.png",
                                   protocol_options={"k": (5,)}, **common)
    single = evaluate_knn(a, k=(5,), per_class=2, **common)
    recorded = read_evals(a)[0]
    assert recorded["test_pixels_sha256"] == curve["lines"][0]["test_pixels_sha256"] == single["test_pixels_sha256"]
    assert curve["lines"][1]["test_pixels_sha256"] != single["test_pixels_sha256"]  # 24 px images
    headers, rows = comparison_rows([a, b], ["a", "b"])
    test = split_folder / "test"
    assert {h: [r[i] for r in rows] for i, h in enumerate(headers) if h.startswith("knn")} == {
        f"knn k=5 (2 per class, 16 px) on {test}": [single["top1"], None],
        f"knn k=5 (2 per class, 24 px) on {test}": [None, curve["lines"][1]["points"][0]["top1"]]}


class Stop(Exception):
    """Stands in for a Ctrl-C in the middle of a run."""


def test_a_result_of_an_older_checkpoint_is_not_the_runs(tmp_path, split_folder, monkeypatch):
    # kNN of the checkpoint written at step 2, then the run resumed to its end: the report showed
    # that figure as the run's. Records now name the checkpoint (SHA-256, position).
    from selfsup.provenance import provenance
    from selfsup.report.tables import EVAL_HEADERS, comparison_rows, eval_rows, run_evals
    from selfsup.train import Trainer

    original, calls = Trainer.step, []

    def step_then_stop(self, images):
        if len(calls) == 2:
            raise Stop
        calls.append(1)
        original(self, images)

    run = tmp_path / "run"
    user = merge_dicts(TINY_RUN, {"out": str(run), "data": {"path": str(split_folder)},
                                  "train": {"checkpoint_every_steps": 1}})
    monkeypatch.setattr(Trainer, "step", step_then_stop)
    with pytest.raises(Stop):
        run_pretraining(user)
    monkeypatch.setattr(Trainer, "step", original)
    common = dict(data=split_folder, k=(5,), device="cpu", show_progress=False)
    early = evaluate_knn(run, **common)
    assert early["checkpoint_position"] == {"epoch": 0, "batch": 2, "step": 2}
    run_pretraining(user, resume=True)

    def table():
        headers, [row] = comparison_rows([run], ["run"])
        return [dict(zip(EVAL_HEADERS, r))["checkpoint"] for r in eval_rows(run_evals(run))], \
            {h: v for h, v in zip(headers, row) if h.startswith("knn")}

    assert table() == (["0 epochs + 2 batches (not last.pt now)"], {})
    final = evaluate_knn(run, **common)
    marks, figures = table()
    assert marks == ["0 epochs + 2 batches (not last.pt now)", "2 epochs"]
    assert list(figures.values()) == [final["top1"]]
    assert len(torch.load(run / "last.pt", weights_only=True)["data"]["pixels_sha256"]) == 64
    # Provenance: in every record, and in run.json (the start, then each --resume).
    started = json.loads((run / "run.json").read_text())
    assert started["started"]["command"] == "python API" and len(started["resumed"]) == 1
    record = read_evals(run)[-1]["provenance"]
    assert record["device"] == "cpu" and record["versions"]["python"] == provenance()["versions"]["python"]
    assert set(record) == {"command", "versions", "host", "device", "processes", "git_commit"}
    assert {"numpy", "pillow"} <= set(record["versions"])  # they draw the label subsets and decode the images
    assert record["processes"] == 1
    assert main(["eval", "knn", "--checkpoint", str(run), "--data", str(split_folder), "--k", "5", "--device", "cpu",
                 "--no-progress"]) == 0
    assert read_evals(run)[-1]["provenance"]["command"][:3] == ["selfsup", "eval", "knn"]


def test_git_commit_is_read_from_the_checkout_without_git(tmp_path):
    from selfsup.provenance import git_commit

    git, inner = tmp_path / "repo" / ".git", tmp_path / "repo" / "src" / "selfsup"
    inner.mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("[project]\nname = 'selfsup'\n")
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert git_commit(inner) is None  # a branch with no commit yet
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/main\n")
    assert git_commit(inner) == "a" * 40
    (git / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert git_commit(inner) == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")  # detached
    assert git_commit(inner) == "c" * 40
    # A wheel installed into a virtual environment inside another repository: not selfsup's commit.
    wheel = tmp_path / "repo" / ".venv" / "lib" / "python3.11" / "site-packages" / "selfsup"
    wheel.mkdir(parents=True)
    assert git_commit(wheel) is None


def test_git_commit_of_a_worktree_a_damaged_gitdir_line_and_a_copy_that_is_no_checkout(tmp_path):
    from selfsup.provenance import git_commit

    main_git = tmp_path / "main" / ".git"
    (main_git / "refs" / "heads").mkdir(parents=True)
    (main_git / "refs" / "heads" / "feature").write_text("d" * 40 + "\n")
    own = main_git / "worktrees" / "wt"  # `git worktree add`: HEAD here, the branches in the main .git
    own.mkdir(parents=True)
    (own / "HEAD").write_text("ref: refs/heads/feature\n")
    (own / "commondir").write_text("../..\n")
    worktree, inner = tmp_path / "wt", tmp_path / "wt" / "src" / "selfsup"
    inner.mkdir(parents=True)
    (worktree / "pyproject.toml").write_text("[project]\nname = 'selfsup'\n")
    (worktree / ".git").write_text("gitdir: ../main/.git/worktrees/wt\n")  # relative, as submodules write it
    assert git_commit(inner) == "d" * 40
    (worktree / ".git").write_text("not a gitdir line\n")
    assert git_commit(inner) is None
    # A copy vendored into another project (not under src/) does not report that project's commit.
    vendored = tmp_path / "main" / "vendor" / "selfsup"
    vendored.mkdir(parents=True)
    (tmp_path / "main" / "pyproject.toml").write_text("[project]\nname = 'app'\n")
    (main_git / "HEAD").write_text("e" * 40 + "\n")
    assert git_commit(vendored) is None


def test_provenance_counts_the_processes_of_a_distributed_run(monkeypatch):
    from selfsup.provenance import provenance

    monkeypatch.setenv("WORLD_SIZE", "8")  # torchrun --nproc-per-node 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # two machines of 4
    assert provenance("cuda:0")["processes"] == 8 and provenance("cuda:0")["device"] == "cuda:0"


def test_training_curves_tick_whole_epochs(tmp_path, monkeypatch):
    # A 2-epoch run's curves were ticked 1.0, 1.2, ..., 2.0 and a 1-epoch run's 0.96, 0.98, ...
    import selfsup.viz as viz

    drawn = []
    monkeypatch.setattr(viz, "save_figure", lambda fig, out, dpi: drawn.append(fig))
    for epochs in (1, 2, 7):
        viz.plot_training_curves([{"epoch": e, "loss": 1 / e} for e in range(1, epochs + 1)], tmp_path / "c.png")
    ticks = [[t for t in fig.axes[0].get_xticks() if 0.5 <= t <= epochs + 0.5] for fig, epochs in zip(drawn, (1, 2, 7))]
    viz.pyplot().close("all")  # save_figure, replaced here, closes them
    assert ticks[0] == [1] and all(t == round(t) for shown in ticks for t in shown) and len(ticks[2]) >= 3


def test_config_table_gives_the_base_rate_per_its_reference_batch(tmp_path):
    # "base lr 0.1000" for rotation (per 128 images) beside "0.1200" for SimCLR (per 256) read as alike.
    from selfsup.config import dump_yaml, resolve
    from selfsup.report.build import _config

    shown = {}
    for method in ("rotation", "simclr"):
        run = fake_run(tmp_path / method, [])
        (run / "config.yaml").write_text(dump_yaml(resolve({"method": method, "data": {"image_size": 32}})))
        shown[method] = _config(run)[1]
    assert "0.1000 per 128 images" in shown["rotation"] and "0.1200 per 256 images" in shown["simclr"]


def test_a_run_whose_features_are_nan_has_its_report_with_a_note(tmp_path, split_folder):
    """A run's features refused as NaN stopped the whole report (of every run given); the run's
    section now says why it has no neighbours or map, and its training curves are still drawn."""
    run = tmp_path / "diverged"
    run_pretraining(merge_dicts(TINY_RUN, {"out": str(run), "data": {"path": str(split_folder)},
                                           "train": {"epochs": 1}}))
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    checkpoint["model"]["backbone.net.layer4.1.bn2.running_var"].fill_(float("nan"))
    torch.save(checkpoint, run / "last.pt")
    text = build_report([run], tmp_path / "r.html", device="cpu", show_progress=False).read_text()
    assert text.count("gives NaN or infinite features for 48 of 48 images; the checkpoint has diverged") == 2
    assert text.count("<img") == 1  # the training curves
