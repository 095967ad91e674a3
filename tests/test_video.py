"""Video and frame folders → the frame cache: clips, frame indices, motion CSVs, bad input."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from selfsup.data.video import open_clips, read_motion_csv
from selfsup.errors import UserError
from selfsup.views.temporal import motion_pairs, usable_clips

from conftest import make_tar

av = pytest.importorskip("av")


def write_video(path, frames: int, size: int = 32, codec: str = "libx264", options: dict | None = None) -> None:
    """A clip whose frame t has a bright vertical bar at column 2t (mod size) on black; `options`
    are the muxer's (movflags=faststart: an mp4's index before its frames)."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[:, (2 * t) % size:(2 * t) % size + 2] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frames(folder, frames: int, size: int = 16, seed: int = 0, start: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{start + t:06d}.png")


def write_motion(path, frames, columns=("yaw", "forward"), seed=0) -> np.ndarray:
    values = np.random.default_rng(seed).normal(size=(len(frames), len(columns))).round(4)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("frame", *columns))
        writer.writerows((frame, *row) for frame, row in zip(frames, values))
    return values


def test_video_files_are_decoded_once_with_clip_and_frame_and_corrupt_ones_counted(tmp_path, capsys):
    write_video(tmp_path / "a.mp4", 12)
    write_video(tmp_path / "b.avi", 7, codec="mpeg4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else")
    cache = open_clips(tmp_path, 32, show_progress=False)
    assert "skipped 1 of 3 files" in capsys.readouterr().err and cache.skipped == ["broken.mp4"]
    assert cache.clip_names == ["a.mp4", "b.avi"] and len(cache) == 19
    assert cache.frame.tolist() == list(range(12)) + list(range(7))
    assert cache.clip.tolist() == [0] * 12 + [1] * 7
    assert_bars_drawn(cache.images[:12], 12)
    again = open_clips(tmp_path, 32, show_progress=False)  # reused, not decoded again
    assert np.array_equal(np.asarray(again.images), np.asarray(cache.images))


def assert_bars_drawn(images, frames: int) -> None:
    """The bright bar of write_video's frame t is in row t, where it was drawn (lossy codec: roughly)."""
    for row in range(frames):
        column_brightness = images[row].astype(float).mean(axis=(0, 2))
        assert abs(int(column_brightness.argmax()) - (2 * row + 0.5)) <= 1.5


def test_a_video_that_fails_part_way_through_decoding_is_skipped_whole_and_counted(tmp_path, capsys):
    """Frames go to the cache as they are decoded: a video whose decoding fails after some frames
    leaves none of them (the next clip's rows follow the last clip's), in a folder and in a tar."""
    from selfsup.data.video import UndecodableVideo, decode_video

    root = tmp_path / "clips"
    root.mkdir()
    write_video(root / "a.mp4", 12)
    write_video(root / "c.mp4", 5)
    write_video(tmp_path / "whole.mp4", 40, options={"movflags": "faststart"})
    whole = (tmp_path / "whole.mp4").read_bytes()
    (root / "b.mp4").write_bytes(whole[:len(whole) * 3 // 4])  # its index is whole, its last frames gone
    frames = decode_video(root / "b.mp4", 32)
    next(frames)  # PyAV decodes its first frames, then fails
    with pytest.raises(UndecodableVideo):
        list(frames)
    for data in (root, make_tar(root, tmp_path / "clips.tar.gz")):
        cache = open_clips(data, 32, cache_dir=tmp_path / "cache", show_progress=False)
        assert "skipped 1 of 3 files" in capsys.readouterr().err and cache.skipped == ["b.mp4"]
        assert cache.clip_names == ["a.mp4", "c.mp4"] and cache.frame.tolist() == list(range(12)) + list(range(5))
        assert cache.images.shape == (17, 32, 32, 3)  # the cache file holds the kept clips' rows alone
        assert_bars_drawn(cache.images[:12], 12)
        assert_bars_drawn(cache.images[12:], 5)


def test_building_the_cache_holds_a_frame_at_a_time_not_a_video(tmp_path):
    """Python's peak while a 4x longer video is decoded into the cache is no higher (it held every
    frame of a video before writing it: 21 GB for an hour at 256 px), from a folder or a tar."""
    import tarfile
    import tracemalloc

    for frames in (2, 40, 160):
        (tmp_path / f"v{frames}").mkdir()
        write_video(tmp_path / f"v{frames}" / "clip.mp4", frames, size=64)
        with tarfile.open(tmp_path / f"v{frames}.tar", "w") as tar:
            tar.add(tmp_path / f"v{frames}" / "clip.mp4", arcname="clip.mp4")
    open_clips(tmp_path / "v2", 64, cache_dir=tmp_path / "cache", show_progress=False)  # imports, first calls
    for suffix in ("", ".tar"):
        peaks = []
        for frames in (40, 160):
            tracemalloc.start()
            open_clips(tmp_path / f"v{frames}{suffix}", 64, cache_dir=tmp_path / "cache", show_progress=False)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        assert peaks[1] - peaks[0] < 120 * 64 * 64 * 3 / 4, (suffix, peaks)  # not 120 frames more


def test_frame_folders_in_class_folders_give_labels_frames_and_motion(tmp_path):
    root = tmp_path / "clips"
    write_frames(root / "cats" / "c1", 5, seed=1, start=1)  # numbered from 1, as ffmpeg does
    write_frames(root / "dogs" / "d1", 4, seed=2)
    frames = [3, 1, 5, 2, 4]  # rows in any order: matched by frame index
    values = write_motion(root / "cats" / "c1.csv", frames)
    cache = open_clips(root, 16, show_progress=False)
    assert cache.clip_names == ["cats/c1", "dogs/d1"] and cache.classes == ["cats", "dogs"]
    assert cache.labels.tolist() == [0] * 5 + [1] * 4
    assert cache.frame.tolist() == [1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert cache.motion_columns == ["yaw", "forward"]
    rows = cache.clip_rows()[0]
    expected = values[np.argsort(frames)]
    np.testing.assert_allclose(cache.motion[rows], expected, rtol=1e-6)
    assert np.isnan(cache.motion[cache.clip_rows()[1]]).all()  # the clip without a CSV


def test_frame_folders_without_frame_numbers_are_warned_of(tmp_path, capsys):
    root = tmp_path / "photos"
    write_frames(root / "numbered", 3)
    rng = np.random.default_rng(0)
    for folder, names in [("cats", ["tabby", "siamese", "persian"]), ("dogs", ["pug", "boxer", "collie"])]:
        (root / folder).mkdir()
        for name in names:  # photos by class: no frame numbers, no order
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / folder / f"{name}.png")
    cache = open_clips(root, 16, show_progress=False)
    assert cache.frame.tolist() == [0, 1, 2] * 3  # the names' order
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "2 of 3 frame folders have frames without distinct numbers" in err
    assert "'cats'" in err
    open_clips(root / "numbered", 16, show_progress=False)
    assert "warning" not in capsys.readouterr().err


def test_tar_of_frame_folders_with_motion(tmp_path):
    write_frames(tmp_path / "src" / "data" / "walk", 4)
    write_motion(tmp_path / "src" / "data" / "walk.csv", [0, 1, 2, 3])
    cache = open_clips(make_tar(tmp_path / "src", tmp_path / "clips.tar.gz"), 16, show_progress=False)
    assert cache.clip_names == ["walk"] and cache.motion.shape == (4, 2) and not np.isnan(cache.motion).any()


def test_tar_of_videos_in_class_folders_keeps_the_classes_and_motion(tmp_path):
    """A tar of DIR holds DIR/CLASS/CLIP.mp4: as for images, its common folder is the root."""
    for name in ("folder", "tar"):
        root = tmp_path / name / "v2"
        (root / "left").mkdir(parents=True)
        (root / "right").mkdir()
        write_video(root / "left" / "l0.mp4", 4)
        write_video(root / "right" / "r0.mkv", 3)
        values = write_motion(root / "left" / "l0.csv", [0, 1, 2, 3])
    folder = open_clips(tmp_path / "folder" / "v2", 32, show_progress=False)
    packed = open_clips(make_tar(tmp_path / "tar", tmp_path / "v2.tar.gz"), 32, show_progress=False)
    for cache in (folder, packed):
        assert cache.clip_names == ["left/l0.mp4", "right/r0.mkv"] and cache.classes == ["left", "right"]
        assert cache.labels.tolist() == [0] * 4 + [1] * 3
        np.testing.assert_allclose(cache.motion[:4], values, rtol=1e-6)


def test_motion_csv_whose_frames_do_not_match_the_clip(tmp_path):
    write_frames(tmp_path / "walk", 4)
    write_motion(tmp_path / "walk.csv", [0, 1, 2])
    with pytest.raises(UserError, match=r"lists 3 frames \(0..2\) but clip 'walk' has 4 \(0..3\)"):
        open_clips(tmp_path, 16, show_progress=False)
    write_motion(tmp_path / "walk.csv", [0, 1, 2, 7])
    with pytest.raises(UserError, match="write one row per frame"):
        open_clips(tmp_path, 16, show_progress=False)
    (tmp_path / "walk.csv").write_text("t,yaw\n0,1\n")
    with pytest.raises(UserError, match="must start with a header 'frame,READING"):
        open_clips(tmp_path, 16, show_progress=False)


def test_motion_csv_rows_must_be_finite_numbers_and_the_file_a_csv(tmp_path):
    with pytest.raises(UserError, match="'m.csv' line 3 is not 3 numbers"):
        read_motion_csv("frame,yaw,forward\n0,1,2\n1,1,x\n", "'m.csv'")
    with pytest.raises(UserError, match="line 2 is not 3 numbers"):
        read_motion_csv("frame,yaw,forward\n0,1\n", "'m.csv'")
    for bad in ("inf", "nan", "-Infinity", "1e39"):  # 1e39: infinite in the float32 kept
        with pytest.raises(UserError, match=rf"'m.csv' line 5 holds a value that is not a finite number \(2,{bad}\)"):
            read_motion_csv(f"frame,yaw\n0,0\n\n1,0.5\n2,{bad}\n", "'m.csv'")
    with pytest.raises(UserError, match=r"'m.csv' line 3 gives frame 1.7; a frame index is a whole number"):
        read_motion_csv("frame,yaw\n0,1\n1.7,2\n", "'m.csv'")  # was read as frame 1
    assert read_motion_csv("frame,yaw\n0.0,1\n1,2\n", "'m.csv'")[1].tolist() == [0, 1]
    with pytest.raises(UserError, match=r"^motion file 'm.csv' is not a readable CSV \(new-line character"):
        read_motion_csv("frame,yaw\n0,1\r2\n", "'m.csv'")
    write_frames(tmp_path / "walk", 3)  # through open_clips: one line naming the file
    (tmp_path / "walk.csv").write_text("frame,yaw\n0,0\n1,inf\n2,1\n")
    with pytest.raises(UserError, match="motion file 'walk.csv' line 3 holds a value that is not a finite number"):
        open_clips(tmp_path, 16, show_progress=False)
    columns, frames, values = read_motion_csv("frame,yaw\n\n0,1.5\n1,-2\n", "'m.csv'")
    assert columns == ["yaw"] and frames.tolist() == [0, 1] and values[:, 0].tolist() == [1.5, -2.0]


def test_short_clips_are_skipped_and_counted_and_all_short_is_an_error(tmp_path, capsys):
    write_frames(tmp_path / "long", 6)
    write_frames(tmp_path / "short", 3, seed=3)
    cache = open_clips(tmp_path, 16, show_progress=False)
    kept = usable_clips(cache, 5, "temporal-order tuples of 3")
    assert len(kept) == 1 and cache.clip[kept[0]].tolist() == [0] * 6
    assert ("skipped 1 of 2 clips that cannot be used for temporal-order tuples of 3: 1 with fewer than 5 frames "
            "(e.g. 'short')") in capsys.readouterr().err
    with pytest.raises(UserError, match=r"no clip in .* can be used for temporal-order tuples of 3: 2 with fewer "
                                        r"than 7 frames \(e.g. 'long'\); give longer clips"):
        usable_clips(cache, 7, "temporal-order tuples of 3")


def test_clips_with_an_undecodable_frame_or_without_motion_are_skipped_and_counted(tmp_path, capsys):
    """A corrupt frame leaves its clip out (its frames and motion rows no longer match): counted
    with the clips that have no motion CSV, not blamed on the CSV."""
    for name in ("good", "broken", "bare"):
        write_frames(tmp_path / name, 4, seed=len(name))
    (tmp_path / "broken" / "000002.png").write_bytes(b"not a png")
    write_motion(tmp_path / "good.csv", [0, 1, 2, 3])
    write_motion(tmp_path / "broken.csv", [0, 1, 2, 3])
    cache = open_clips(tmp_path, 16, show_progress=False)
    assert "skipped 1 of 12 files" in capsys.readouterr().err
    assert [cache.clip_names[c] for c in cache.incomplete] == ["broken"]
    pairs = motion_pairs(cache, 1)
    assert set(cache.clip[pairs.rows.ravel()].tolist()) == {cache.clip_names.index("good")}
    assert ("skipped 2 of 3 clips that cannot be used for frame pairs 1 apart: 1 without a motion CSV (e.g. 'bare'), "
            "1 with a frame that could not be decoded (e.g. 'broken')") in capsys.readouterr().err
    (tmp_path / "good.csv").unlink()
    with pytest.raises(UserError, match="no clip in .*: 2 without a motion CSV .* write a CLIP.csv"):
        motion_pairs(open_clips(tmp_path, 16, show_progress=False), 1)


def test_no_readable_video_at_all(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 1 video files"):
        open_clips(tmp_path, 16, show_progress=False)
    with pytest.raises(UserError, match="does not exist"):
        open_clips(tmp_path / "nope", 16, show_progress=False)


def test_image_methods_train_on_the_frames_of_a_folder_of_videos(tmp_path):
    """SimCLR (any image method) on video files: their frames, as the temporal methods see them."""
    from selfsup.data import open_images
    from selfsup.train import run_pretraining
    videos = tmp_path / "videos"
    for cls in ("left", "right"):
        (videos / cls).mkdir(parents=True)
        for i in range(2):
            write_video(videos / cls / f"{i}.mp4", 12, size=16)
    frames = open_images(videos, 16, show_progress=False)
    assert len(frames) == 48 and frames.classes == ["left", "right"]
    result = run_pretraining({"method": "simclr", "data": {"path": str(videos), "image_size": 16},
                              "out": str(tmp_path / "run"), "backbone": {"name": "resnet18-half"},
                              "train": {"epochs": 1, "batch_size": 16, "progress": False}})
    assert result.checkpoint.is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):  # neither images nor videos
        open_images(tmp_path / "empty", 16)


def test_a_frame_folder_with_a_missing_frame_number_is_skipped_and_counted_but_a_steady_stride_is_a_clip(
        tmp_path, capsys):
    write_frames(tmp_path / "whole", 6)
    write_frames(tmp_path / "gap", 6, seed=1)
    (tmp_path / "gap" / "000003.png").unlink()  # frames 2 and 4 would pass for neighbours
    write_motion(tmp_path / "gap.csv", [0, 1, 2, 4, 5])  # rows that match the files: still no clip
    for t in range(5):  # every other frame of a video, numbered as in the video: evenly spaced
        write_frames(tmp_path / "stride", 1, seed=10 + t, start=2 * t)
    cache = open_clips(tmp_path, 16, show_progress=False)
    assert [cache.clip_names[c] for c in cache.gapped] == ["gap"]
    kept = usable_clips(cache, 3, "temporal-order tuples of 3")
    assert sorted(cache.clip_names[cache.clip[rows[0]]] for rows in kept) == ["stride", "whole"]
    assert "1 with missing frame numbers (e.g. 'gap')" in capsys.readouterr().err


def test_motion_csvs_with_a_byte_order_mark_and_methods_that_do_not_read_them(tmp_path):
    write_frames(tmp_path / "walk", 4)
    values = write_motion(tmp_path / "walk.csv", [0, 1, 2, 3])
    text = (tmp_path / "walk.csv").read_text()
    (tmp_path / "walk.csv").write_text(text, encoding="utf-8-sig")  # a spreadsheet's "CSV UTF-8"
    cache = open_clips(tmp_path, 16, show_progress=False)
    assert cache.motion_columns == ["yaw", "forward"]
    np.testing.assert_allclose(cache.motion, values.astype(np.float32))
    write_motion(tmp_path / "walk.csv", [0, 1, 2])  # stale: temporal order does not read it
    from selfsup.methods.temporal_order import open_data
    assert open_data(tmp_path, 16, show_progress=False).motion is None
    with pytest.raises(UserError, match="lists 3 frames"):
        open_clips(tmp_path, 16, show_progress=False)


def test_frame_folders_beside_video_files_are_said_to_be_left_out(tmp_path, capsys):
    write_video(tmp_path / "a.mp4", 6)
    write_frames(tmp_path / "frames", 4)
    cache = open_clips(tmp_path, 16, show_progress=False)
    assert cache.clip_names == ["a.mp4"]
    assert "holds 1 video files and 4 images; the images (frame folders) are left out" in capsys.readouterr().err


def test_dicom_frames_without_a_suffix_beside_videos_are_counted_as_images_in_a_folder_and_a_tar(tmp_path, capsys):
    """The images said to be left out beside videos are those open_source lists: a scanner's frames
    named IM0001 are DICOM files by content, in a folder as in a tar; a README is no image, nor is a
    picture in a folder that listings skip (a Mac's __MACOSX)."""
    from test_dicom import dicom_bytes

    folder = tmp_path / "clips"
    (folder / "scan").mkdir(parents=True)
    write_video(folder / "a.mp4", 6)
    write_frames(folder / "frames", 2)
    stored = np.random.default_rng(0).integers(0, 4096, size=(20, 20)).astype(np.uint16)
    for name in ("IM0001", "IM0002"):
        (folder / "scan" / name).write_bytes(dicom_bytes(stored, bits_stored=12))
    (folder / "scan" / "README").write_text("frames of the fluoroscopy " * 20)
    write_frames(folder / "__MACOSX", 1)
    for path in (folder, make_tar(folder, tmp_path / "clips.tar.gz")):
        assert open_clips(path, 16, cache_dir=tmp_path / "cache", show_progress=False).clip_names == ["a.mp4"]
        assert "holds 1 video files and 4 images" in capsys.readouterr().err


def test_files_that_cannot_be_used_are_warned_of_once_though_a_video_folder_is_listed_again(tmp_path, capsys,
                                                                                             monkeypatch):
    """A folder is listed for videos, then (to find out whether it holds any) for images or frames:
    each file or folder it cannot use is said once, and images left out anyway beside videos not."""
    import os
    from selfsup.data import open_images

    def left_out_warnings():
        return [line for line in capsys.readouterr().err.splitlines() if "cannot be used" in line]

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 6)
    (videos / "moved.mp4").symlink_to(tmp_path / "gone.mp4")
    assert len(open_images(videos, 16, cache_dir=tmp_path / "cache", show_progress=False).names) == 6
    assert len(warned := left_out_warnings()) == 1 and "'moved.mp4'" in warned[0]

    write_frames(videos / "frames", 4)  # beside the videos: left out, whatever their links
    (videos / "frames" / "moved.png").symlink_to(tmp_path / "gone.png")
    open_clips(videos, 16, cache_dir=tmp_path / "cache", show_progress=False)
    err = capsys.readouterr().err
    assert err.count("cannot be used") == 1 and "'moved.mp4'" in err and "moved.png" not in err
    assert err.count("holds 1 video files and 4 images") == 1

    frames = tmp_path / "frames"  # no video: listed for videos, then as frame folders
    write_frames(frames / "walk", 4)
    write_frames(frames / "locked", 4)
    (frames / "moved.mp4").symlink_to(tmp_path / "gone.mp4")
    scandir = os.scandir

    def locked_out(folder):  # a folder this user may not read (chmod does not stop root)
        if os.fspath(folder).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(folder))
        return scandir(folder)

    monkeypatch.setattr(os, "scandir", locked_out)
    assert open_clips(frames, 16, cache_dir=tmp_path / "cache", show_progress=False).clip_names == ["walk"]
    warned = left_out_warnings()
    assert len(warned) == 2 and "'moved.mp4'" in warned[0] and "'locked'" in warned[1]


def test_change_ratio_tells_video_from_folders_of_photos():
    from selfsup.views.temporal import change_ratio
    rng = np.random.default_rng(0)
    scenes = np.kron(rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8), np.ones((1, 8, 8, 1), np.uint8))  # blocks
    video = np.concatenate([[np.roll(scene, t, axis=1)[:16, :16] for t in range(8)] for scene in scenes])  # pans
    photos = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    clips = [np.arange(8 * c, 8 * c + 8) for c in range(4)]
    assert change_ratio(video, clips, seed=0) < 0.75 < change_ratio(photos, clips, seed=0)
    assert change_ratio(photos, clips[:1], seed=0) is None


def test_egomotion_refuses_readings_that_never_change_and_warns_of_fewer_classes_than_asked(tmp_path, capsys):
    from selfsup.methods import egomotion
    for c in range(3):
        write_frames(tmp_path / f"clip{c}", 6, seed=c)
        (tmp_path / f"clip{c}.csv").write_text("frame,yaw\n" + "".join(f"{t},0.5\n" for t in range(6)))
    config = egomotion.Config()
    with pytest.raises(UserError, match=r"the motion readings of all 15 frame pairs are the same"):
        egomotion.samples(config, open_clips(tmp_path, 16, show_progress=False), seed=0)
    (tmp_path / "clip1.csv").write_text("frame,yaw\n" + "".join(f"{t},-0.5\n" for t in range(6)))  # two motions
    egomotion.samples(config, open_clips(tmp_path, 16, show_progress=False), seed=0)
    assert ("the motion readings make only 2 distinct motion classes of the 6 asked for; "
            "the maps of the others learn nothing: "
            "config={'egomotion': {'motion_classes': 2}}") in capsys.readouterr().err


def test_the_typical_frame_side_is_read_from_headers_of_videos_and_of_frames(tmp_path, capsys):
    """What a random: encoder is drawn at on clips (eval.video.equivariance_report), as eval draws
    it at its images' median shorter side: no frame is decoded to know it."""
    from selfsup.data.video import typical_frame_side

    videos = tmp_path / "videos"
    videos.mkdir()
    for i, size in enumerate((32, 48, 48)):
        write_video(videos / f"{i}.mp4", 2, size=size)
    (videos / "broken.mp4").write_bytes(b"not a video")
    frames = tmp_path / "frames"
    write_frames(frames / "walk", 3, size=16)
    write_frames(frames / "run", 3, size=24)
    write_frames(frames / "jump", 3, size=24)
    (frames / "jump" / "000099.png").write_bytes(b"not an image")
    assert typical_frame_side(videos) == 48 and typical_frame_side(frames) == 24
    assert typical_frame_side(make_tar(videos, tmp_path / "videos.tar")) == 48
    assert typical_frame_side(make_tar(frames, tmp_path / "frames.tar.gz")) == 24
    assert typical_frame_side(tmp_path / "missing") is None  # open_clips says what is wrong
    assert capsys.readouterr().err == ""  # nor what it cannot read: open_clips says that too, once
