"""Many files on a Ray cluster: the same results as a plain run, and dying workers retried."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_cli import assert_one_line_error, run

PORT = "6391"


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-machine Ray cluster started as users start one (``ray start --head``), on the
    loopback address; -> its address."""
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        ray_cli = shutil.which("ray")
    head = subprocess.run([str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", PORT,
                           "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                          capture_output=True, text=True)
    assert head.returncode == 0, head.stderr
    try:
        yield f"127.0.0.1:{PORT}"
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True)


def test_a_ray_cluster_builds_the_same_gallery_as_a_plain_run(gallery_photos, ray_cluster, tmp_path):
    from densemesh.gallery import Gallery

    proc = run("index", "build", gallery_photos, "--out", tmp_path / "ray", "--device", "cpu", "--ray", ray_cluster)
    assert proc.returncode == 0, proc.stderr
    proc = run("index", "build", gallery_photos, "--out", tmp_path / "plain", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    on_ray, plain = Gallery.load(tmp_path / "ray"), Gallery.load(tmp_path / "plain")
    assert on_ray.faces == plain.faces and on_ray.files == plain.files and len(plain.faces) >= 5
    np.testing.assert_allclose(on_ray.vectors, plain.vectors, atol=1e-5)


def test_a_ray_cluster_reconstructs_a_folder_as_a_plain_run_does(shared, ray_cluster, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("lenna.png", "takeo.ppm", "breakingbad.jpg"):
        shutil.copy(shared / "faces" / "annotated" / name, photos / name)
    (photos / "broken.jpg").write_bytes(b"not a photo")
    common = ("reconstruct", photos, "--refine", "none", "--device", "cpu", "--format", "npz,json")
    on_ray = run(*common, "--out", tmp_path / "ray", "--ray", ray_cluster)
    plain = run(*common, "--out", tmp_path / "plain")
    assert on_ray.returncode == plain.returncode == 2, on_ray.stderr  # the broken photo
    assert "broken.jpg" in on_ray.stderr and on_ray.stdout == plain.stdout.replace("plain", "ray")
    summaries = [json.loads((tmp_path / run_ / "summary.json").read_text()) for run_ in ("ray", "plain")]
    assert summaries[0] == summaries[1] and sum(i.get("faces", 0) for i in summaries[1]["images"]) >= 4
    for image in (i for i in summaries[1]["images"] if "folder" in i):
        for face in sorted((tmp_path / "plain" / image["folder"]).glob("face_*")):
            a, b = (np.load(tmp_path / run_ / image["folder"] / face.name / "result.npz") for run_ in ("ray", "plain"))
            np.testing.assert_allclose(a["vertices_2d"], b["vertices_2d"], atol=0.01)  # px; 1 thread vs 2
            np.testing.assert_allclose(a["vertices"], b["vertices"], atol=1e-3)  # cm


def _die_on(marker_folder: str, item: str):
    """A work function whose process dies: on the first try of "once", on every try of "always"."""
    marker = Path(marker_folder) / item
    if item == "always" or (item == "once" and not marker.exists()):
        marker.touch()
        os._exit(1)
    return item.upper(), os.getpid()


def test_a_worker_that_dies_is_restarted_and_its_file_retried(ray_cluster, tmp_path):
    import ray
    import ray.cloudpickle

    from densemesh.distributed import MAX_RETRIES, WorkerDied, map_on_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests
    try:
        done = dict(map_on_ray(ray_cluster, lambda: str(tmp_path), _die_on, ["a", "once", "b", "always", "c"]))
    finally:
        ray.shutdown()
    assert sorted(done) == ["a", "always", "b", "c", "once"]
    assert {k: v[0] for k, v in done.items() if k != "always"} == {"a": "A", "once": "ONCE", "b": "B", "c": "C"}
    assert isinstance(done["always"], WorkerDied) and f"died {MAX_RETRIES + 1} times" in str(done["always"])


def test_an_address_where_no_cluster_answers_gets_one_line_and_nothing_written(tmp_path):
    from PIL import Image
    from skimage import data

    (tmp_path / "photos").mkdir()
    Image.fromarray(data.astronaut()).save(tmp_path / "photos" / "astronaut.png")
    for command in (("reconstruct", tmp_path / "photos"), ("index", "build", tmp_path / "photos")):
        proc = run(*command, "--out", tmp_path / "out", "--ray", "127.0.0.1:1")
        assert_one_line_error(proc, "no Ray cluster answers at 127.0.0.1:1")
        assert not (tmp_path / "out").exists()
