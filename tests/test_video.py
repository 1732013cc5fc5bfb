"""Video reconstruction: tracking, identity lock, smoothing, resumable streaming outputs, GLB."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from densemesh.export import ARKIT_COLUMNS, NpyStream, ict_to_arkit
from densemesh.video import OneEuro, VideoError, VideoOptions, VideoReader, VideoReconstructor


def write_video(path, frames, fps=25, rotation=None):
    import av

    options = {"movflags": "faststart"} if str(path).endswith(".mp4") else {}  # index first, as streamed files
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def talking(shared):
    return shared / "video" / "talking_d0.mp4"


@pytest.fixture(scope="module")
def source_frames(talking):
    reader = VideoReader(talking)
    frames = [f.image for f in reader.frames()]
    reader.close()
    return frames


@pytest.fixture(scope="module")
def rec():
    from densemesh.pipeline import Reconstructor

    with Reconstructor(device="cpu", refine="none", search="fast") as r:
        yield r


@pytest.fixture(scope="module")
def talking_run(talking, rec, tmp_path_factory):
    out = tmp_path_factory.mktemp("talking")
    summary = VideoReconstructor(rec, VideoOptions(mesh_format="obj")).run(talking, out)
    return out, summary


def test_outputs_of_a_talking_head(talking_run, rec, source_frames):
    import trimesh

    out, summary = talking_run
    n, t = rec.model.num_vertices, len(source_frames)
    assert [tr["frames"] for tr in summary["tracks"]] == [t]
    track = out / "track_00"
    frames = sorted((track / "frames").iterdir())
    assert len(frames) == t and frames[0].name == "000000.obj"
    mesh = trimesh.load(frames[10], process=False, maintain_order=True)
    assert mesh.vertices.shape == (n, 3)
    verts = np.load(track / "vertices.npy", mmap_mode="r")
    assert verts.shape == (t, n, 3) and np.allclose(verts[10], mesh.vertices, atol=1e-4)
    with np.load(track / "landmarks.npz") as z:
        assert z["landmarks68_2d"].shape == (t, 68, 2) and z["vertices_2d"].shape == (t, n, 2)
        assert z["visibility"].shape == (t, n) and z["visibility"].dtype == bool
        assert np.array_equal(z["frame_index"], np.arange(t)) and np.all(np.diff(z["time"]) > 0)
    assert not list(track.glob(".stream_*"))  # finished runs leave no partial files
    # the identity is the same in every frame: the mesh changes only by expression
    rows = list(csv.reader(open(track / "coefficients.csv")))
    assert rows[0][:8] == ["frame", "time", "yaw", "pitch", "roll", "tx", "ty", "tz"] and len(rows) == t + 1
    assert rows[0][8:] == rec.model.expression_names
    summary_file = json.loads((out / "summary.json").read_text())
    assert summary_file["complete"] and len(summary_file["tracks"][0]["identity"]) == 100


def test_the_search_backs_off_on_a_still_scene_and_finds_a_face_that_comes(source_frames):
    """VideoFaceFinder: searches wait 1, 2, 4 s while they find nothing new; a small face that
    appears (pasted from frame 160 on, too small for the video landmarker) is found by the next
    search (at most 4 s later), then followed to the end, and the search after that comes 1 s
    later."""
    import cv2
    from skimage import data

    from densemesh.detect import VideoFaceFinder

    frames = (source_frames + source_frames[::-1]) * 2  # about 12 s at 25 frames/s
    small = cv2.resize(data.astronaut()[30:250, 130:330], (80, 88))
    searched, counts = [], []
    with VideoFaceFinder(boxes_without_landmarks=True) as finder:
        search = finder.photo.detect
        finder.photo.detect = lambda image: (searched.append(i), search(image))[1]
        for i, frame in enumerate(frames):
            if i >= 160:
                frame = frame.copy()
                frame[-100:-12, 12:92] = small
            counts.append(len(finder.detect(frame, timestamp_ms=40 * i)))
    assert searched[:4] == [0, 50, 150, 250]  # waits of 2, 4, 4 s: no face but the tracked one until 160
    assert set(counts[:250]) == {1} and set(counts[250:]) == {2}, counts
    assert searched[4] == 275  # found at 250: the next search 1 s later


def test_arkit_csv_is_live_link_layout(talking_run, source_frames):
    rows = list(csv.reader(open(talking_run[0] / "track_00" / "arkit.csv")))
    assert rows[0] == ["Timecode", "BlendShapeCount", *ARKIT_COLUMNS] and len(ARKIT_COLUMNS) == 61
    assert len(rows) == len(source_frames) + 1
    values = np.array([[float(v) for v in r[2:54]] for r in rows[1:]])
    assert values.min() >= 0 and values.max() <= 1 and values[:, ARKIT_COLUMNS.index("JawOpen")].max() > 0.05
    assert all(r[1] == "61" for r in rows[1:]) and rows[1][0].count(":") == 3


def test_glb_has_named_morph_targets_and_one_keyframe_per_frame(talking_run, rec, source_frames):
    import pygltflib
    import trimesh

    glb = talking_run[0] / "track_00" / "animation.glb"
    gltf = pygltflib.GLTF2().load(str(glb))
    mesh = gltf.meshes[0]
    assert len(mesh.primitives[0].targets) == 53 and mesh.extras["targetNames"] == rec.model.expression_names
    anim = gltf.animations[0]
    assert sorted(c.target.path for c in anim.channels) == ["rotation", "translation", "weights"]
    times = gltf.accessors[anim.samplers[0].input]
    assert times.count == len(source_frames)
    assert gltf.accessors[anim.samplers[0].output].count == 53 * len(source_frames)
    scene = trimesh.load(glb)
    geom = next(iter(scene.geometry.values()))
    assert 7944 <= len(geom.vertices) < 8300  # split only at UV seams


GLTF_VALIDATOR = ROOT / ".ci" / "node_modules" / "gltf-validator"


@pytest.mark.skipif(shutil.which("node") is None or not GLTF_VALIDATOR.is_dir(),
                    reason="the Khronos glTF validator is not installed (.ci/run installs it with npm)")
def test_glb_passes_the_khronos_validator(talking_run):
    glb = talking_run[0] / "track_00" / "animation.glb"
    script = ("const v = require(process.argv[1]); const fs = require('fs');"
              "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))"
              ".then(r => console.log(JSON.stringify(r.issues)));")
    out = subprocess.run(["node", "-e", script, str(GLTF_VALIDATOR), str(glb)], capture_output=True, text=True,
                         check=True)
    issues = json.loads(out.stdout)
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"][:5]


@pytest.mark.skipif(shutil.which("blender") is None, reason="Blender is not installed here")
def test_blender_imports_the_glb(talking_run, tmp_path, source_frames):
    script = tmp_path / "check.py"
    glb = talking_run[0] / "track_00" / "animation.glb"
    # import_shading: Debian's Blender 3.4 add-on calls numpy's removed np.bool on the default path
    script.write_text(
        "import bpy\n"
        "bpy.ops.wm.read_factory_settings(use_empty=True)\n"
        f"bpy.ops.import_scene.gltf(filepath=r'{glb}', import_shading='SMOOTH')\n"
        "obj = [o for o in bpy.data.objects if o.type == 'MESH'][0]\n"
        "keys = obj.data.shape_keys.key_blocks\n"
        "act = obj.data.shape_keys.animation_data.action\n"
        "fps = bpy.context.scene.render.fps / bpy.context.scene.render.fps_base\n"
        "print('RESULT', len(keys) - 1, keys[1].name, act.frame_range[0], act.frame_range[1], fps)\n")
    out = subprocess.run(["blender", "-b", "--python", str(script)], capture_output=True, text=True, timeout=300)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
    assert line is not None, out.stdout[-2000:] + out.stderr[-2000:]
    n_keys, first, start, end, fps = line.split()[1:]
    times = np.load(talking_run[0] / "track_00" / "landmarks.npz")["time"]
    assert int(n_keys) == 53 and first == "browDown_L"
    assert abs((float(end) - float(start)) / float(fps) - (times[-1] - times[0])) < 0.1  # seconds


def test_smoothing_halves_the_jitter(talking, rec, tmp_path):
    def jitter(smooth):
        out = tmp_path / f"s{smooth}"
        VideoReconstructor(rec, VideoOptions(mesh_format=None, smooth=smooth)).run(talking, out)
        with np.load(out / "track_00" / "landmarks.npz") as z:
            lm = z["landmarks68_2d"]
        return np.linalg.norm(lm[2:] - 2 * lm[1:-1] + lm[:-2], axis=-1).mean()

    assert jitter(1.0) < 0.5 * jitter(0.0)


def test_a_face_that_leaves_and_returns_keeps_its_id(source_frames, rec, tmp_path):
    blank = [np.zeros_like(source_frames[0])] * 20
    path = write_video(tmp_path / "return.mp4", source_frames[:30] + blank + source_frames[30:60])
    summary = VideoReconstructor(rec, VideoOptions(mesh_format=None)).run(path, tmp_path / "out")
    assert [t["frames"] for t in summary["tracks"]] == [60]
    with np.load(tmp_path / "out" / "track_00" / "landmarks.npz") as z:
        assert z["frame_index"][29] == 29 and z["frame_index"][30] == 50


def test_face_noface_has_one_track(shared, rec, tmp_path):
    summary = VideoReconstructor(rec, VideoOptions(mesh_format=None)).run(shared / "video" / "face_noface.mov", tmp_path)
    assert len(summary["tracks"]) == 1 and summary["tracks"][0]["frames"] > 50


def test_edge_cases(shared, rec, tmp_path, source_frames, talking):
    # no face: no track, not an error
    assert VideoReconstructor(rec).run(shared / "video" / "no_face.mp4", tmp_path / "none")["tracks"] == []
    # one frame
    one = write_video(tmp_path / "one.mp4", source_frames[:1])
    assert [t["frames"] for t in VideoReconstructor(rec).run(one, tmp_path / "one")["tracks"]] == [1]
    # a still image through the video path
    from PIL import Image

    Image.fromarray(source_frames[0]).save(tmp_path / "still.png")
    assert [t["frames"] for t in VideoReconstructor(rec).run(tmp_path / "still.png", tmp_path / "still")["tracks"]] == [1]
    # truncated (a file with its index up front, as downloads and recordings often are): what
    # decodes is processed, the rest reported
    data = write_video(tmp_path / "full.mp4", source_frames).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    summary = VideoReconstructor(rec, VideoOptions(mesh_format=None)).run(tmp_path / "cut.mp4", tmp_path / "cut")
    assert 10 < summary["frames_processed"] < len(source_frames)
    assert summary["tracks"][0]["frames"] == summary["frames_processed"]
    # a file cut before its index cannot be opened at all: a clear error
    (tmp_path / "head.mp4").write_bytes(talking.read_bytes()[:5000])
    with pytest.raises(VideoError):
        VideoReconstructor(rec).run(tmp_path / "head.mp4", tmp_path / "head")


def test_rotation_metadata_is_applied(source_frames, tmp_path):
    turned = [np.ascontiguousarray(np.rot90(f, -1)) for f in source_frames[:3]]  # stored on its side
    path = write_video(tmp_path / "rot.mp4", turned, rotation=90)  # players turn it back
    frame = next(VideoReader(path).frames())
    assert np.abs(frame.image.astype(int) - source_frames[0]).mean() < 5


def test_interrupt_and_resume(talking, rec, tmp_path, source_frames):
    def stop_at_30(index, total):
        if index == 30:
            raise KeyboardInterrupt

    video = VideoReconstructor(rec, VideoOptions(mesh_format="ply"))
    with pytest.raises(KeyboardInterrupt):
        video.run(talking, tmp_path, progress=stop_at_30)
    state = json.loads((tmp_path / "summary.json").read_text())
    assert state["interrupted"] and not state["complete"] and state["next_frame"] == 31
    assert np.load(tmp_path / "track_00" / "vertices.npy", mmap_mode="r").shape[0] == 31  # valid as it stands
    summary = VideoReconstructor(rec, VideoOptions(mesh_format="ply")).run(talking, tmp_path, resume=True)
    assert summary["resumed_from"] == 31 and [t["frames"] for t in summary["tracks"]] == [len(source_frames)]
    with np.load(tmp_path / "track_00" / "landmarks.npz") as z:
        assert np.array_equal(z["frame_index"], np.arange(len(source_frames)))
    assert len(list((tmp_path / "track_00" / "frames").iterdir())) == len(source_frames)


def test_cli_video_and_errors(shared, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "densemesh", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    proc = run("reconstruct", shared / "video" / "no_face.mp4", "--out", tmp_path / "a")
    assert proc.returncode == 0 and "no face" in proc.stdout
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    proc = run("reconstruct", tmp_path / "bad.mp4", "--out", tmp_path / "b")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert run("reconstruct", shared / "video" / "no_face.mp4", "--out", tmp_path / "c", "--format", "npz").returncode == 2


def test_one_euro_smooths_noise_and_follows_steps():
    rng = np.random.default_rng(0)
    f = OneEuro(min_cutoff=1.5, beta=0.6)
    t = np.arange(200) / 30.0
    signal = np.where(t < 3, 0.0, 1.0)
    out = np.array([f(np.array([s + rng.normal(0, 0.02)]), ti)[0] for s, ti in zip(signal, t)])
    assert out[30:85].std() < 0.5 * 0.02  # still: noise cut by more than half
    assert abs(out[95] - 1.0) < 0.1  # a step is followed within 5 frames


def test_npy_stream_is_valid_while_growing_and_resumes(tmp_path):
    stream = NpyStream(tmp_path / "a.npy", (2, 3), np.float32)
    for i in range(5):
        stream.append(np.full((2, 3), i))
    stream.flush()
    assert np.load(tmp_path / "a.npy", mmap_mode="r").shape == (5, 2, 3)
    stream.close()
    again = NpyStream(tmp_path / "a.npy", (2, 3), np.float32, resume=3)  # keeps 3 rows, drops the rest
    again.append(np.full((2, 3), 9))
    again.close()
    arr = np.load(tmp_path / "a.npy")
    assert arr.shape == (4, 2, 3) and arr[3, 0, 0] == 9 and arr[2, 0, 0] == 2


def test_ict_to_arkit_mapping(face_model):
    names = face_model.expression_names
    w = np.zeros(53)
    w[names.index("eyeBlink_L")] = 0.8
    w[names.index("browInnerUp_L")], w[names.index("browInnerUp_R")] = 0.2, 0.6
    w[names.index("jawOpen")] = 0.5
    a = dict(zip(ARKIT_COLUMNS, ict_to_arkit(w, names)))
    assert a["EyeBlinkLeft"] == 0.8 and a["EyeBlinkRight"] == 0 and a["JawOpen"] == 0.5
    assert a["BrowInnerUp"] == pytest.approx(0.4) and a["TongueOut"] == 0


def test_refined_video_frames(source_frames, tmp_path):
    from densemesh.pipeline import Reconstructor

    clip = write_video(tmp_path / "three.mp4", source_frames[:3])
    with Reconstructor(device="cpu", refine="fast", search="fast") as rec:
        summary = VideoReconstructor(rec, VideoOptions(mesh_format=None)).run(clip, tmp_path / "out")
    assert summary["refine"] == "fast" and [t["frames"] for t in summary["tracks"]] == [3]
    with np.load(tmp_path / "out" / "track_00" / "landmarks.npz") as z:
        assert np.isfinite(z["landmarks68_2d"]).all()
