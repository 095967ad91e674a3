"""The synthetic sources: moving-camera clips with motor signals, and the physics world."""
from __future__ import annotations

import csv
import math
import numpy as np
import pytest

from selfsup.data.video import open_clips
from selfsup.synth.motion import MOTIONS, MotionSettings, camera_path, make_motion_clips, motor_readings
from selfsup.views.temporal import kmeans, motion_pairs, reading_scale

from conftest import SAMPLE, write_dataset

pymunk = pytest.importorskip("pymunk")


def known_motions(out) -> dict[str, str]:
    with open(out / "clips.csv") as f:
        return {row["clip"]: row["motion"] for row in csv.DictReader(f)}


def test_motion_clips_are_deterministic_and_laid_out_as_documented(tmp_path):
    settings = MotionSettings(frames=5, size=12, max_images=4, seed=3)
    for name in ("a", "b"):
        make_motion_clips(SAMPLE, tmp_path / name, settings, show_progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    clips = known_motions(tmp_path / "a")
    assert len(clips) == 4 and all(c.count("/") == 1 for c in clips)  # CLASS/clip-N: the source's classes
    first = list(clips)[1]  # pan-left (the first is "still")
    assert len(list((tmp_path / "a" / first).glob("*.png"))) == 5
    header = (tmp_path / "a" / f"{first}.csv").read_text().splitlines()[0]
    assert header == "frame,yaw,pitch,roll,forward"
    make_motion_clips(SAMPLE, tmp_path / "c", MotionSettings(frames=5, size=12, max_images=4, seed=4), show_progress=False)
    assert (tmp_path / "c" / f"{first}.csv").read_bytes() != (tmp_path / "a" / f"{first}.csv").read_bytes()


@pytest.mark.parametrize("motion", list(MOTIONS))
def test_every_view_of_every_motion_stays_inside_the_image(motion):
    readings = motor_readings(motion, 40, 2.0, np.random.default_rng(0))
    x, y, side, angle = camera_path(readings, 0.6).T
    reach = side / 2 * (np.abs(np.cos(np.radians(angle))) + np.abs(np.sin(np.radians(angle))))
    assert (x - reach >= -1e-9).all() and (x + reach <= 1 + 1e-9).all()
    assert (y - reach >= -1e-9).all() and (y + reach <= 1 + 1e-9).all()


def test_frames_move_as_the_motor_signal_says(tmp_path):
    """A pan to the right slides the picture left: the best horizontal shift between consecutive
    frames has the sign of the yaw."""
    write_dataset(tmp_path / "src", per_class=1, size=64)
    for motion, sign in (("pan-right", -1), ("pan-left", 1)):
        out = tmp_path / motion
        make_motion_clips(tmp_path / "src", out, MotionSettings(frames=4, size=32, motions=(motion,), speed=2.0),
                          show_progress=False)
        cache = open_clips(out, 32, show_progress=False)
        rows = cache.clip_rows()[0]
        a, b = (cache.images[r].astype(float).mean(2) for r in rows[1:3])
        errors = {s: np.abs(a[:, 8:24] - b[:, 8 + s:24 + s]).mean() for s in range(-4, 5)}
        assert sign * min(errors, key=errors.get) > 0


def test_clustering_the_motor_signal_recovers_each_known_motion(tmp_path):
    make_motion_clips(SAMPLE, tmp_path, MotionSettings(frames=6, size=8, max_images=54), show_progress=False)
    cache = open_clips(tmp_path, 8, show_progress=False)
    pairs = motion_pairs(cache, 2)
    classes = kmeans(pairs.motion / reading_scale(pairs.motion), len(MOTIONS), seed=0)
    truth = known_motions(tmp_path)
    motion_of_pair = np.asarray([truth[cache.clip_names[c]] for c in cache.clip[pairs.rows[:, 0]]])
    found = {m: set(classes[motion_of_pair == m].tolist()) for m in MOTIONS}
    assert all(len(c) == 1 for c in found.values())  # each known motion in one class ...
    assert len({c.pop() for c in found.values()}) == len(MOTIONS)  # ... of its own


def test_synth_cli_and_its_errors(tmp_path, capsys):
    from selfsup.cli import main

    assert main(["synth", "motion", "--from", str(SAMPLE), "--out", str(tmp_path / "m"), "--frames", "3",
                 "--size", "8", "--max-images", "2", "--json", "--no-progress"]) == 0
    assert '"clips": 2' in capsys.readouterr().out
    assert main(["synth", "interaction", "--out", str(tmp_path / "w"), "--count", "3", "--objects", "0",
                 "--size", "8", "--no-progress"]) == 0
    assert "wrote 3 interactions" in capsys.readouterr().out
    assert main(["synth", "motion", "--from", str(SAMPLE), "--out", str(tmp_path / "x"), "--motions", "spin"]) == 2
    assert capsys.readouterr().err.startswith("selfsup: error: unknown motion 'spin'; valid: still, pan-left")
    assert main(["synth", "motion", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # Into a folder an earlier run wrote: refused, since its leftover frames and records would mix in.
    for kind, extra in (("motion", ["--from", str(SAMPLE), "--frames", "2"]), ("interaction", ["--count", "2"])):
        before = sorted(p for p in (tmp_path / "m").rglob("*"))
        assert main(["synth", kind, *extra, "--out", str(tmp_path / "m"), "--size", "8", "--no-progress"]) == 2
        assert capsys.readouterr().err.startswith(f"selfsup: error: '{tmp_path / 'm'}' is not empty: give synth a new")
        assert sorted(p for p in (tmp_path / "m").rglob("*")) == before
        # Where no folder can be made (under a file): one line, no traceback.
        (tmp_path / "file").write_text("")
        assert main(["synth", kind, *extra, "--out", str(tmp_path / "file" / "sub"), "--size", "8", "--no-progress"]) == 2
        assert capsys.readouterr().err.startswith(f"selfsup: error: cannot create '{tmp_path / 'file' / 'sub'}' (")
    (tmp_path / "empty").mkdir()
    assert main(["synth", "motion", "--from", str(SAMPLE), "--out", str(tmp_path / "empty"), "--frames", "2",
                 "--size", "8", "--max-images", "1", "--no-progress"]) == 0


@pytest.mark.parametrize("kind,option,value,valid", [
    ("motion", "--max-images", "-3", "0 (every image) or more"),
    ("motion", "--clips-per-image", "0", "1 or more"),
    ("motion", "--clips-per-image", "-1", "1 or more"),
    ("motion", "--seed", "-1", "0 or more"),
    ("motion", "--speed", "inf", "a finite number, 0 or more"),
    ("interaction", "--size", "0", "4 or more pixels"),
    ("interaction", "--size", "1", "4 or more pixels"),
    ("interaction", "--seed", "-2", "0 or more"),
])
def test_synth_options_out_of_range_are_one_line(tmp_path, capsys, kind, option, value, valid):
    from selfsup.cli import main

    source = ["--from", str(SAMPLE)] if kind == "motion" else []
    assert main(["synth", kind, *source, "--out", str(tmp_path / "out"), option, value, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"selfsup: error: synth {kind}: {option} {value} is out of range; give {valid}\n"
    assert not (tmp_path / "out").exists()


def test_corrupt_source_images_are_skipped_and_counted(tmp_path, capsys):
    from selfsup.cli import main

    write_dataset(tmp_path / "src", per_class=2, size=16)
    (tmp_path / "src" / "circle" / "broken.png").write_bytes(b"not a png")
    args = ["synth", "motion", "--from", str(tmp_path / "src"), "--frames", "2", "--size", "8", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "wrote 6 clips" in captured.out
    assert (f"skipped 1 of 7 files in {tmp_path / 'src'} that are not readable images (e.g. 'circle/broken.png'); "
            f"going on with 6") in captured.err
    assert len(known_motions(tmp_path / "out")) == 6
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"nor this")
    args[3] = str(tmp_path / "bad")
    assert main([*args, "--out", str(tmp_path / "out2")]) == 2
    assert capsys.readouterr().err.startswith("selfsup: error: none of the 1 images in ")


# ---------------------------------------------------------------------------------------------
# The physics world


def test_untouched_objects_do_not_move_and_a_push_through_the_centre_does_not_rotate():
    from selfsup.synth.interaction import Thing, World

    for shape in ("circle", "square"):
        target = Thing(shape, "wood", 10.0, (40.0, 64.0), 0.0, (0, 0, 0))
        bystander = Thing("triangle", "metal", 10.0, (100.0, 100.0), 0.3, (0, 0, 0))
        world = World([target, bystander])
        before = world.poses()
        world.push((20.0, 64.0), 0.0, 24.0)  # along +x, on the line through the centre of mass
        after = world.poses()
        assert np.array_equal(after[1], before[1])  # untouched: exactly where it was
        assert after[0, 0] - before[0, 0] > 5  # pushed forward ...
        assert abs(after[0, 1] - before[0, 1]) < 1e-6 and abs(after[0, 2] - before[0, 2]) < 1e-6  # ... straight
    world = World([Thing("bar", "rubber", 10.0, (40.0, 64.0), 0.0, (0, 0, 0))])
    world.push((20.0, 60.0), 0.0, 24.0)  # off the centre: it turns
    assert abs(world.poses()[0, 2]) > 0.01


def test_poke_slides_light_slippery_objects_further():
    from selfsup.synth.interaction import MATERIALS, Thing, World

    def slide(material):
        world = World([Thing("circle", material, 10.0, (64.0, 64.0), 0.0, (0, 0, 0))])
        world.poke(0, (64.0, 64.0), 0.0, 8000.0)
        return world.poses()[0, 0] - 64.0

    slides = {m: slide(m) for m in MATERIALS}
    # Coulomb friction: v0 = J / m and d = v0^2 / (2 mu g), so d is proportional to 1 / (density^2 mu)
    expected = {m: 1 / (MATERIALS[m][0] ** 2 * MATERIALS[m][1]) for m in MATERIALS}
    for a in MATERIALS:
        for b in MATERIALS:
            if expected[a] > 1.5 * expected[b]:
                assert slides[a] > slides[b] > 0


def test_grasps_succeed_and_fail_as_the_jaws_find_them():
    from selfsup.synth.interaction import Thing, World

    def grasp(thing, point, angle, opening=26.0):
        return World([thing]).grasp(0, point, angle, opening)

    small = Thing("circle", "metal", 9.0, (64.0, 64.0), 0.0, (0, 0, 0))
    assert all(grasp(small, (64.0, 64.0), a) for a in np.linspace(0, math.pi, 7))  # any angle
    assert not grasp(small, (64.0, 90.0), 0.0)  # the jaws close on nothing
    big = Thing("circle", "rubber", 13.5, (64.0, 64.0), 0.0, (0, 0, 0))
    assert not grasp(big, (64.0, 64.0), 0.0)  # wider than the opening: a jaw lands on it
    square = Thing("square", "wood", 13.0, (64.0, 64.0), 0.0, (0, 0, 0))  # 18.2 across, 25.7 corner to corner
    assert grasp(square, (64.0, 64.0), 0.0) and not grasp(square, (64.0, 64.0), math.pi / 4, opening=24.0)


def test_records_match_their_simulation_and_are_deterministic(tmp_path, capsys):
    from selfsup.synth.interaction import WorldSettings, record_interactions, simulate

    settings = WorldSettings(size=16, seed=5)
    record_interactions(tmp_path / "w", 9, 24, settings, show_progress=False)
    with open(tmp_path / "w" / "interactions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == ["grasp", "push", "poke"] * 3
    for i, row in enumerate(rows):
        image, record = simulate(i, settings)
        assert row["image"] == f"{record['shape']}-{record['material']}/{i:06d}.png"
        assert {k: str(v) for k, v in record.items()} == {k: v for k, v in row.items() if k != "image"}
        assert np.array_equal(np.asarray(image), np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
            tmp_path / "w" / "images" / row["image"]).convert("RGB")))
        if row["kind"] == "grasp":
            assert row["dx"] == row["dy"] == "0.0"  # a grasp test does not move the object
        else:
            assert math.hypot(float(row["dx"]), float(row["dy"])) == pytest.approx(float(row["distance"]), abs=2e-6)
    split = {part: sorted({p.parent.name for p in (tmp_path / "w" / "objects" / part).rglob("*.png")})
             for part in ("train", "test")}
    assert split["train"] == split["test"] and len(split["test"]) == 12  # every class in both: eval works
    assert len(list((tmp_path / "w" / "objects" / "test").rglob("*.png"))) == 12
    record_interactions(tmp_path / "few", 1, 6, settings, show_progress=False)
    assert "with --objects 6, fewer than 2 per class, some of the 12 classes have no test image" in \
        capsys.readouterr().err


def test_motion_clips_from_a_list_of_up_paths_stay_inside_out(tmp_path):
    """The list's ../ names are no class folders: the clips land in OUT, not beside it."""
    from conftest import write_dataset
    from selfsup.cli import main
    write_dataset(tmp_path / "imgs", per_class=1)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "l.txt").write_text("../imgs/circle/000.png\n../imgs/square/000.png\n")
    assert main(["synth", "motion", "--from", str(tmp_path / "lists" / "l.txt"), "--out", str(tmp_path / "o" / "out"),
                 "--frames", "2", "--size", "8", "--no-progress"]) == 0
    written = {p.relative_to(tmp_path).parts[0:2] for p in tmp_path.rglob("clip-*")}
    assert written == {("o", "out")}
