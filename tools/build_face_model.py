#!/usr/bin/env python3
"""Build densemesh's face-model asset (templates/face_model.npz) from ICT-FaceKit.

    python tools/build_face_model.py [--source ../shared/ict-facekit]
        [--mediapipe-mesh ../shared/mediapipe/canonical_face_model.obj] [--out templates]

What it makes (every length in centimetres, ICT model space):

* face topology: ICT's face area (vertices 0-9408, material M_Face) with its
  outer rim trimmed by RIM_RINGS rings of vertices -> 7,944 vertices, one
  manifold patch with an outer rim, open eyes and mouth;
* head topology: face + head/neck + mouth socket + eye sockets + gums/tongue +
  teeth + eyeballs (ICT vertices 0-24590; the eyelash strips, lacrimal fluid
  and eye blend/occlusion shells need special shaders and are left out).
  Head vertex order starts with the face vertices, so face vertex i is head
  vertex i;
* mean shape (float32), 100 identity modes and 53 expression offsets
  (float16, offsets from the neutral);
* UVs (ICT layout, per triangle corner) for both topologies, per-vertex region
  labels, a smooth albedo basis (the face mesh's 40 lowest Laplacian eigenvectors),
  candidate lines along which the jaw and eyelid landmarks slide to the visible outlines, the 68 iBUG landmark vertices with jaw-contour candidate lines, and
  the MediaPipe-468 -> face-surface correspondence (three vertices and
  barycentric weights per point), registered by fitting ICT's identity modes
  to MediaPipe's canonical mesh.

The output is byte-for-byte reproducible (fixed zip timestamps, sorted members,
no randomness). Prints the numbers the closing notes report.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

RIM_RINGS = 7  # rings of vertices trimmed from the face area's outer rim
HEAD_LAST_VERTEX = 24590  # ICT vertices 0..24590: face, head, sockets, mouth, teeth, eyeballs
HEAD_MATERIALS = ("M_Face", "M_BackHead", "M_GumsTongue", "M_Teeth",
                  "M_ScleraLeft", "M_IrisLeft", "M_ScleraRight", "M_IrisRight")
IDENTITY_MODES = 100

# iBUG-68 mirror partners (subject's right <-> left), used for the contour
# lines and checked by the tests.
IBUG_MIRROR = ([(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
               + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47),
                  (41, 46), (48, 54), (49, 53), (50, 52), (59, 55), (58, 56), (60, 64),
                  (61, 63), (67, 65)])

# MediaPipe FaceMesh indices (its public connection lists): anchor pairs with
# iBUG points for the initial similarity, and the lid / lip contours.
MP_IBUG_ANCHORS = {33: 36, 133: 39, 362: 42, 263: 45, 61: 48, 291: 54, 0: 51, 17: 57,
                   1: 30, 2: 33, 168: 27, 152: 8}
MP_EYE_RIMS = {  # (eye, lid) -> MediaPipe indices on that lid margin, corner to corner
    ("right", "upper"): [246, 161, 160, 159, 158, 157, 173],
    ("right", "lower"): [7, 163, 144, 145, 153, 154, 155],
    ("left", "upper"): [466, 388, 387, 386, 385, 384, 398],
    ("left", "lower"): [249, 390, 373, 374, 380, 381, 382],
    ("right", "corner"): [33, 133],
    ("left", "corner"): [263, 362],
}
# iBUG points that densemesh places at MediaPipe points rather than at ICT's own vertices,
# because ICT's choice follows another convention: the brows (17-26) lie on the brow's upper edge
# (ICT: about 5 mm higher, MediaPipe's upper brow contour), the eye points (36-47) on the lid
# margin, the edge of the eye opening (ICT: 1-3 mm out on the lid skin, MediaPipe's lid contour,
# which the registration puts on ICT's eye rims), the mouth corners (48, 54) at the commissures
# (ICT: about 3.5 mm further out on the cheek).
IBUG_FROM_MEDIAPIPE = {17: 70, 18: 63, 19: 105, 20: 66, 21: 107, 22: 336, 23: 296, 24: 334, 25: 293, 26: 300,
                       36: 33, 37: 160, 38: 158, 39: 133, 40: 153, 41: 144,
                       42: 362, 43: 385, 44: 387, 45: 263, 46: 373, 47: 380, 48: 61, 54: 291}
MP_INNER_LIPS = {
    "upper": [191, 80, 81, 82, 13, 312, 311, 310, 415],
    "lower": [95, 88, 178, 87, 14, 317, 402, 318, 324],
    "corner": [78, 308],
}
LIP_BAND_RINGS = 4  # inner-lip points search this many rings around their half of the mouth rim

ALBEDO_MODES = 40  # smoothest Laplacian eigenvectors of the face mesh: the refinement's albedo basis
REGION_NAMES = ("forehead", "brow_right", "brow_left", "eye_right", "eye_left", "nose",
                "mouth", "cheek_right", "cheek_left", "jaw", "ear_right", "ear_left")


# ----------------------------------------------------------------------------- reading
def read_obj(path: Path):
    """ICT OBJ -> (polygons as vertex lists, their uv-index lists, material per polygon, uvs (U,2))."""
    polys, poly_uvs, materials, uvs = [], [], [], []
    material = None
    with open(path) as f:
        for line in f:
            if line.startswith("vt "):
                uvs.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("usemtl "):
                material = line.split()[1]
            elif line.startswith("f "):
                corners = [c.split("/") for c in line.split()[1:]]
                polys.append([int(c[0]) - 1 for c in corners])
                poly_uvs.append([int(c[1]) - 1 for c in corners])
                materials.append(material)
    return polys, poly_uvs, materials, np.asarray(uvs, np.float64)


def triangulate(polys, poly_uvs):
    """Split quads along their 0-2 diagonal. -> (T,3) vertex ids, (T,3) uv ids."""
    tris, tri_uvs = [], []
    for p, q in zip(polys, poly_uvs):
        for k in range(1, len(p) - 1):
            tris.append([p[0], p[k], p[k + 1]])
            tri_uvs.append([q[0], q[k], q[k + 1]])
    return np.asarray(tris, np.int64), np.asarray(tri_uvs, np.int64)


def read_canonical_mesh(path: Path):
    """MediaPipe canonical face mesh -> (468,3) vertices in cm, (F,3) triangles."""
    verts, tris = [], []
    for line in open(path):
        if line.startswith("v "):
            verts.append([float(x) for x in line.split()[1:4]])
        elif line.startswith("f "):
            tris.append([int(c.split("/")[0]) - 1 for c in line.split()[1:]])
    return np.asarray(verts), np.asarray(tris, np.int64)


# ----------------------------------------------------------------------------- topology
def edges_of(tris):
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    return np.sort(e, axis=1)


def boundary_loops(tris):
    """Boundary loops of a triangle mesh, each an ordered vertex list, longest first."""
    directed = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    und, counts = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)
    boundary = {tuple(e) for e in und[counts == 1]}
    nxt = {}
    for a, b in directed:
        if (min(a, b), max(a, b)) in boundary:
            nxt[int(a)] = int(b)
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(loop)
    return sorted(loops, key=len, reverse=True)


def ring_distance(tris, n, sources):
    """Breadth-first ring count (edges) from `sources` to every vertex (n,), -1 if unreachable."""
    adj = defaultdict(set)
    for a, b in edges_of(tris):
        adj[a].add(b)
        adj[b].add(a)
    dist = np.full(n, -1, np.int64)
    frontier = list(sources)
    dist[frontier] = 0
    while frontier:
        nxt = []
        for v in frontier:
            for w in adj[v]:
                if dist[w] < 0:
                    dist[w] = dist[v] + 1
                    nxt.append(w)
        frontier = nxt
    return dist


def check_clean_patch(tris, n):
    """Assert one connected, edge-manifold patch without bow-tie vertices; return loop lengths."""
    und, counts = np.unique(edges_of(tris), axis=0, return_counts=True)
    assert counts.max() <= 2, "non-manifold edge"
    bnd = und[counts == 1]
    per_vertex = np.bincount(bnd.ravel(), minlength=n)
    assert per_vertex.max() <= 2, "bow-tie vertex on the boundary"
    e = edges_of(tris)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    assert connected_components(graph, directed=False)[0] == 1, "more than one component"
    return [len(l) for l in boundary_loops(tris)]


# ----------------------------------------------------------------------------- geometry helpers
def umeyama(src, dst, weights=None):
    """Similarity (s, R, t) minimising sum w |s R src + t - dst|^2. src, dst: (K,3)."""
    w = np.ones(len(src)) if weights is None else weights
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / (w @ (a ** 2).sum(1))
    return scale, rot, mu_d - scale * rot @ mu_s


def closest_on_triangles(points, verts, tris):
    """Closest surface points. -> (P,3) triangle vertex ids, (P,3) barycentric weights, (P,) distance."""
    mesh = trimesh.Trimesh(verts, tris, process=False)
    closest, dist, tri_id = trimesh.proximity.closest_point(mesh, points)
    corners = tris[tri_id]
    bary = trimesh.triangles.points_to_barycentric(verts[corners], closest)
    bary = np.clip(bary, 0.0, 1.0) / np.clip(bary, 0.0, 1.0).sum(1, keepdims=True)
    # rounded to 1e-6 so the asset does not hang on the last bits of a library's arithmetic
    # (trimesh / numpy releases differ by ~1e-14 here)
    return corners, np.round(bary, 6), dist


def closest_on_polyline(points, verts, chain):
    """Closest points on an open vertex chain. -> (P,3) vertex ids (third repeats), (P,3) weights, (P,) dist."""
    a, b = verts[chain[:-1]], verts[chain[1:]]
    ab = b - a
    t = np.clip(np.einsum("pkc,kc->pk", points[:, None] - a[None], ab) / (ab ** 2).sum(1), 0, 1)
    proj = a[None] + t[..., None] * ab[None]
    d = np.linalg.norm(points[:, None] - proj, axis=2)
    k = d.argmin(1)
    rows = np.arange(len(points))
    ids = np.stack([np.asarray(chain)[k], np.asarray(chain)[k + 1], np.asarray(chain)[k]], 1)
    weights = np.stack([1 - t[rows, k], t[rows, k], np.zeros(len(points))], 1)
    return ids, weights, d[rows, k]


def split_loop(loop, verts, corner_a, corner_b):
    """Split a closed loop at the vertices nearest two corner points -> (upper chain, lower chain)."""
    loop = list(loop)
    ia = int(np.linalg.norm(verts[loop] - corner_a, axis=1).argmin())
    ib = int(np.linalg.norm(verts[loop] - corner_b, axis=1).argmin())
    rolled = loop[ia:] + loop[:ia]
    ib = (ib - ia) % len(loop)
    one, two = rolled[: ib + 1], rolled[ib:] + rolled[:1]
    return (one, two) if verts[one, 1].mean() > verts[two, 1].mean() else (two, one)


# ----------------------------------------------------------------------------- asset parts
def contour_lines(mean, ibug, labels, n_face, per_line=16, spread=(45.0, 30.0)):
    """Jaw-contour candidates: for each iBUG jaw point 0-16, face vertices (ears excluded) of its
    height band on its side, from ``spread[0]`` degrees in front of the landmark to ``spread[1]``
    behind it, measured round the vertical axis; ``per_line`` evenly spaced picks, front first,
    the landmark itself among them.
    The chin (8) keeps its own vertex. -> (17, per_line) vertex ids.
    """
    center_z = mean[ibug[[0, 16]], 2].mean()
    not_ear = ~np.isin(labels, [REGION_NAMES.index("ear_right"), REGION_NAMES.index("ear_left")])
    lines = np.zeros((17, per_line), np.int64)
    for k in range(17):
        p = mean[ibug[k]]
        if k == 8:
            lines[k] = ibug[k]
            continue
        cand = np.flatnonzero((np.abs(mean[:n_face, 1] - p[1]) < 0.45)
                              & (np.sign(mean[:n_face, 0]) == np.sign(p[0])) & not_ear)
        ang = np.degrees(np.arctan2(np.abs(mean[cand, 0]), mean[cand, 2] - center_z))
        a0 = np.degrees(np.arctan2(abs(p[0]), p[2] - center_z))
        keep = (ang >= a0 - spread[0]) & (ang <= a0 + spread[1])
        cand, ang = cand[keep], ang[keep]
        targets = np.linspace(ang.min(), ang.max(), per_line)
        lines[k] = [cand[np.abs(ang - t).argmin()] for t in targets]
        lines[k, np.abs(targets - a0).argmin()] = ibug[k]  # the landmark itself is a candidate
    return lines


LID_POINTS = (37, 38, 40, 41, 43, 44, 46, 47)  # iBUG eyelid points


def lid_lines(mean, points, face_tris, n_face, per_line=8):
    """Eyelid columns: for each point (M, 3) on a lid (mean shape), a path of vertices from the
    eye-rim vertex nearest it across the lid's rings (each step to the next ring out from the rim,
    keeping the start's angle round the eye's centre). ICT's lid surface runs from the lid skin
    over the visible lid edge and curls back to the eye rim, and it slides down as the eye
    closes, so the visible lid margin is the column's lowest (upper lid) / highest (lower lid)
    camera-facing vertex, found at run time. -> (M, per_line) vertex ids, (M,) bool upper lid."""
    adj = defaultdict(set)
    for a, b in edges_of(face_tris):
        adj[int(a)].add(int(b))
        adj[int(b)].add(int(a))
    rims = boundary_loops(face_tris)[2:4]
    lines = np.zeros((len(points), per_line), np.int64)
    upper = np.zeros(len(points), bool)
    for i, p in enumerate(points):
        rim = min(rims, key=lambda l: np.linalg.norm(mean[l].mean(0) - p))
        ring = ring_distance(face_tris, n_face, rim)
        center = mean[rim, :2].mean(0)
        angle = lambda v: np.arctan2(*(mean[v, 1::-1] - center[::-1]))  # noqa: E731
        start = rim[int(np.linalg.norm(mean[rim] - p, axis=1).argmin())]
        upper[i] = mean[start, 1] > center[1]
        path = [start]
        while len(path) < per_line:
            cur = path[-1]
            out = [w for w in adj[cur] if ring[w] == ring[cur] + 1] or \
                [w for w in adj[cur] if ring[w] >= ring[cur] and w not in path]
            path.append(min(out, key=lambda w: abs(np.angle(np.exp(1j * (angle(w) - angle(start)))))))
        lines[i] = path
    return lines, upper


def region_labels(mean, ibug, n_face):
    """One region per face vertex (index into REGION_NAMES), from the mean shape and the iBUG
    landmarks: brows, eyes, nose and mouth are landmark polygons (frontal view) dilated by a
    margin, the forehead lies above the brows, the ears' fronts behind the top of the jaw line,
    the jaw below the mouth and outside the jaw line, the cheeks are the rest (split left/right)."""
    from matplotlib.path import Path as Polygon

    xy = mean[:n_face, :2]
    lm = mean[ibug, :2]
    labels = np.full(n_face, -1, np.int64)

    def near_polygon(points, margin):
        inside = Polygon(points).contains_points(xy)
        hull = np.concatenate([points, points[:1]])
        seg_d = np.min([np.linalg.norm(xy - (a + np.clip(((xy - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)[:, None] * (b - a)), axis=1)
                        for a, b in zip(hull[:-1], hull[1:])], axis=0)
        return inside | (seg_d < margin)

    def assign(name, mask):
        labels[(labels < 0) & mask] = REGION_NAMES.index(name)

    assign("eye_right", near_polygon(lm[36:42], 0.6))
    assign("eye_left", near_polygon(lm[42:48], 0.6))
    brow_r = np.concatenate([lm[17:22], lm[21:16:-1] - [0, 0.7]])
    brow_l = np.concatenate([lm[22:27], lm[26:21:-1] - [0, 0.7]])
    assign("brow_right", near_polygon(brow_r, 0.5))
    assign("brow_left", near_polygon(brow_l, 0.5))
    nose = np.concatenate([lm[[27]], lm[[39]] + [0.3, -0.6], lm[31:36][:1] - [0.5, 0], lm[31:36],
                           lm[35:36] + [0.5, 0], lm[[42]] + [-0.3, -0.6]])
    assign("nose", near_polygon(nose, 0.3))
    assign("mouth", near_polygon(lm[48:60], 0.6))
    brow_top = lm[17:27, 1].max()
    assign("forehead", xy[:, 1] > brow_top)
    # the front of the ears: behind the jaw line's top, at and above ear-lobe height
    ear = (mean[:n_face, 2] < 2.5) & (mean[:n_face, 1] > -1.5) & (np.abs(xy[:, 0]) > 6.0)
    assign("ear_right", ear & (xy[:, 0] < 0))
    assign("ear_left", ear & (xy[:, 0] > 0))
    jaw = Polygon(np.concatenate([lm[0:17], lm[[26, 17]] + [0, 3.0]]))
    assign("jaw", (xy[:, 1] < lm[57, 1] - 0.3) | ~jaw.contains_points(xy))
    assign("cheek_right", xy[:, 0] < 0)
    assign("cheek_left", xy[:, 0] >= 0)
    return labels


def laplacian_basis(tris, n, modes):
    """(n, modes) eigenvectors of the face mesh's graph Laplacian with the smallest eigenvalues
    (constant first): smooth functions on the surface, orthonormal. Deterministic: fixed start
    vector, each vector's largest entry made positive."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import eigsh

    e = np.unique(edges_of(tris), axis=0)
    adj = coo_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(n, n)).tocsc()
    lap = diags(np.asarray(adj.sum(1)).ravel()) - adj
    vals, vecs = eigsh(lap, k=modes, sigma=-1e-3, which="LM", v0=np.ones(n) / np.sqrt(n))
    vecs = vecs[:, np.argsort(vals)]
    peak = vecs[np.abs(vecs).argmax(0), np.arange(modes)]
    return vecs * np.sign(peak)


def register_mediapipe(mp_verts, mean, id_basis, face_tris, n_face, ibug, iterations=12,
                       id_weight=0.05):
    """Register MediaPipe's canonical mesh to the ICT face and derive the correspondence.

    1. similarity from MP_IBUG_ANCHORS; 2. alternate closest points on the face surface with a
    ridge fit of ICT's identity modes and a new similarity; 3. final closest points on the fitted
    surface, with lid points snapped onto their eye rims and inner-lip points onto the lip band of
    their half of the mouth. Returns vertex ids (468,3), weights (468,3) and residual stats (cm).
    """
    face_mean = mean[:n_face]
    face_basis = id_basis[:, :n_face]
    anchors_mp = np.array(list(MP_IBUG_ANCHORS))
    anchors_ict = face_mean[ibug[list(MP_IBUG_ANCHORS.values())]]
    s, rot, t = umeyama(mp_verts[anchors_mp], anchors_ict)
    pts = s * mp_verts @ rot.T + t
    alpha = np.zeros(len(face_basis))
    initial = closest_on_triangles(pts, face_mean, face_tris)[2]
    for _ in range(iterations):
        shape = face_mean + np.tensordot(alpha, face_basis, 1)
        ids, w, _ = closest_on_triangles(pts, shape, face_tris)
        # model point = sum_j w_j (mean + B alpha)[ids_j]: linear in alpha
        target_mean = np.einsum("pj,pjc->pc", w, face_mean[ids])
        basis_at = np.einsum("pj,kpjc->kpc", w, face_basis[:, ids])  # (K,P,3)
        a = basis_at.reshape(len(face_basis), -1).T
        rhs = (pts - target_mean).ravel()
        alpha = np.linalg.solve(a.T @ a + id_weight * len(pts) * np.eye(a.shape[1]), a.T @ rhs)
        model_pts = target_mean + np.tensordot(alpha, basis_at, 1)
        s2, rot2, t2 = umeyama(pts, model_pts)
        pts = s2 * pts @ rot2.T + t2
    shape = face_mean + np.tensordot(alpha, face_basis, 1)
    ids, w, dist = closest_on_triangles(pts, shape, face_tris)

    loops = boundary_loops(face_tris)
    eye_loops = {"right": min(loops[2:4], key=lambda l: shape[l, 0].mean()),
                 "left": max(loops[2:4], key=lambda l: shape[l, 0].mean())}
    corners = {"right": (36, 39), "left": (45, 42)}
    for eye, loop in eye_loops.items():
        upper, lower = split_loop(loop, shape, shape[ibug[corners[eye][0]]], shape[ibug[corners[eye][1]]])
        for lid, chain in (("upper", upper), ("lower", lower), ("corner", loop + loop[:1])):
            idx = MP_EYE_RIMS[(eye, lid)]
            ids[idx], w[idx], dist[idx] = closest_on_polyline(pts[idx], shape, chain)
    mouth = loops[1]
    upper, lower = split_loop(mouth, shape, shape[ibug[60]], shape[ibug[64]])
    ring = ring_distance(face_tris, n_face, mouth)
    for half, chain in (("upper", upper), ("lower", lower)):
        other = lower if half == "upper" else upper
        d_this = ring_distance(face_tris, n_face, chain)
        d_other = ring_distance(face_tris, n_face, [v for v in other if v not in chain])
        band = (ring <= LIP_BAND_RINGS) & (d_this <= d_other)
        band_tris = face_tris[band[face_tris].all(1)]
        idx = MP_INNER_LIPS[half]
        ids[idx], w[idx], dist[idx] = closest_on_triangles(pts[idx], shape, band_tris)
    idx = MP_INNER_LIPS["corner"]
    ids[idx], w[idx], dist[idx] = closest_on_polyline(pts[idx], shape, mouth + mouth[:1])
    surface = np.einsum("pj,pjc->pc", w, shape[ids])
    anchor_gap = np.linalg.norm(surface[anchors_mp] - shape[ibug[list(MP_IBUG_ANCHORS.values())]], axis=1)
    stats = {"rigid_mean_mm": 10 * float(initial.mean()),
             "fitted_mean_mm": 10 * float(dist.mean()),
             "fitted_median_mm": 10 * float(np.median(dist)),
             "fitted_p95_mm": 10 * float(np.percentile(dist, 95)),
             "fitted_max_mm": 10 * float(dist.max()),
             "anchor_to_ibug_mean_mm": 10 * float(anchor_gap.mean())}
    return ids.astype(np.int32), w.astype(np.float32), stats


# ----------------------------------------------------------------------------- writing
def write_npz(path: Path, arrays: dict):
    """Deterministic .npz: sorted members, fixed timestamps, deflate; atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.require(arrays[name], requirements="C"), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    os.replace(tmp, path)


NOTICE = """densemesh face-model asset (templates/face_model.npz)
======================================================

Derived by tools/build_face_model.py from the ICT-FaceKit "Light" face model
(USC Institute for Creative Technologies), https://github.com/ICT-VGL/ICT-FaceKit,
commit {commit}: its neutral mesh, 100 identity modes and 53 expression
blendshapes, topology, UV layout and 68 landmark vertices, re-organised
(face topology trimmed at its rim, float16 offsets).

The MediaPipe correspondence was computed by registering MediaPipe's canonical
face mesh (Apache-2.0, Google LLC, from the face_landmarker_v2.task bundle) to
the ICT face; only the resulting indices and weights are stored.

ICT-FaceKit licence:

{licence}
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=SHARED / "ict-facekit", help="ICT-FaceKit folder")
    ap.add_argument("--mediapipe-mesh", type=Path, default=SHARED / "mediapipe" / "canonical_face_model.obj")
    ap.add_argument("--out", type=Path, default=ROOT / "templates")
    ap.add_argument("--commit", default="da5f95a", help="ICT-FaceKit commit recorded in NOTICE")
    args = ap.parse_args(argv)
    for p in (args.source / "shapes.npz", args.source / "FaceXModel" / "generic_neutral_mesh.obj", args.mediapipe_mesh):
        if not p.exists():
            raise SystemExit(f"error: {p} not found (pass --source / --mediapipe-mesh)")

    shapes = np.load(args.source / "shapes.npz")
    indices = json.load(open(args.source / "FaceXModel" / "vertex_indices.json"))
    neutral = shapes["generic_neutral_mesh"].astype(np.float64)
    polys, poly_uvs, materials, uvs = read_obj(args.source / "FaceXModel" / "generic_neutral_mesh.obj")
    materials = np.asarray(materials)

    # --- face topology: the face area trimmed at its outer rim
    face_polys = [i for i, m in enumerate(materials) if m == "M_Face"]
    area_tris, area_tri_uvs = triangulate([polys[i] for i in face_polys], [poly_uvs[i] for i in face_polys])
    n_area = int(area_tris.max()) + 1
    rim = boundary_loops(area_tris)[0]
    keep = ring_distance(area_tris, n_area, rim) >= RIM_RINGS

    # --- head topology: kept face triangles first, then the trimmed rim and the other parts.
    # Vertices are numbered by first appearance in that triangle list, the order in which
    # re-indexing OBJ readers (assimp, open3d) meet them: vertex i is the same point in every tool,
    # and the face's vertices are the head's first ones.
    face_mask = keep[area_tris].all(1)
    other_polys = [i for i, m in enumerate(materials) if m in HEAD_MATERIALS and m != "M_Face"]
    other_tris, other_tri_uvs = triangulate([polys[i] for i in other_polys], [poly_uvs[i] for i in other_polys])
    head_tris_ict = np.concatenate([area_tris[face_mask], area_tris[~face_mask], other_tris])
    head_tri_uvs_ict = np.concatenate([area_tri_uvs[face_mask], area_tri_uvs[~face_mask], other_tri_uvs])
    flat = head_tris_ict.ravel()
    head_vertices = flat[np.sort(np.unique(flat, return_index=True)[1])]
    assert len(head_vertices) == HEAD_LAST_VERTEX + 1 == head_tris_ict.max() + 1
    n_face = int(keep.sum())
    to_head = np.full(len(neutral), -1, np.int64)
    to_head[head_vertices] = np.arange(len(head_vertices))
    head_tris = to_head[head_tris_ict]
    face_tris = head_tris[: int(face_mask.sum())]
    assert (np.unique(face_tris) == np.arange(n_face)).all(), "face topology has unused vertices"
    loops = check_clean_patch(face_tris, n_face)

    def compact_uvs(tri_uvs):
        used, inverse = np.unique(tri_uvs, return_inverse=True)
        return uvs[used].astype(np.float32), inverse.reshape(tri_uvs.shape).astype(np.int32)

    face_uv, face_tri_uv = compact_uvs(area_tri_uvs[face_mask])
    head_uv, head_tri_uv = compact_uvs(head_tri_uvs_ict)

    # --- shape bases on the head vertex order
    mean = neutral[head_vertices]
    id_names = [f"identity{k:03d}" for k in range(IDENTITY_MODES)]
    exp_names = list(indices["expressions"])
    id_basis = np.stack([shapes[n][head_vertices] - mean for n in id_names])
    exp_basis = np.stack([shapes[n][head_vertices] - mean for n in exp_names])
    id16, exp16 = id_basis.astype(np.float16), exp_basis.astype(np.float16)
    f16_err_mm = 10 * max(np.abs(id16.astype(np.float64) - id_basis).max(),
                          np.abs(exp16.astype(np.float64) - exp_basis).max())
    mean32 = mean.astype(np.float32)
    mean_err_mm = 10 * np.abs(mean32.astype(np.float64) - mean).max()

    # --- landmarks, contour lines, regions, MediaPipe correspondence
    ibug = to_head[np.asarray(indices["idx_to_landmark_verts"])]
    assert (ibug >= 0).all() and (ibug < n_face).all()
    labels = region_labels(mean, ibug, n_face)
    lines = contour_lines(mean, ibug, labels, n_face)
    albedo_basis = laplacian_basis(face_tris, n_face, ALBEDO_MODES)
    mp_verts, _ = read_canonical_mesh(args.mediapipe_mesh)
    mp_ids, mp_w, mp_stats = register_mediapipe(mp_verts, mean, id_basis, face_tris, n_face, ibug)
    # iBUG brows and eyes: the face vertices nearest their MediaPipe points on the mean face
    moved = list(IBUG_FROM_MEDIAPIPE)
    mp_at = list(IBUG_FROM_MEDIAPIPE.values())
    points = np.einsum("pj,pjc->pc", mp_w[mp_at], mean[mp_ids[mp_at]])
    shift_mm = 10 * np.linalg.norm(mean[ibug[moved]] - points, axis=1)
    ibug = ibug.copy()
    ibug[moved] = [np.linalg.norm(mean[:n_face] - p, axis=1).argmin() for p in points]
    ibug_lids, ibug_lid_upper = lid_lines(mean, mean[ibug[list(LID_POINTS)]], face_tris, n_face)
    mp_lid_ids = np.array(sorted({i for (eye, lid), ids in MP_EYE_RIMS.items() if lid != "corner" for i in ids}))
    mp_lid_points = np.einsum("pj,pjc->pc", mp_w[mp_lid_ids], mean[mp_ids[mp_lid_ids]])
    mp_lids, mp_lid_upper = lid_lines(mean, mp_lid_points, face_tris, n_face)

    arrays = {
        "mean": mean32,
        "identity_basis": id16,
        "expression_basis": exp16,
        "expression_names": np.asarray(exp_names),
        "face_num_vertices": np.asarray(n_face, np.int32),
        "face_triangles": face_tris.astype(np.int32),
        "face_uvs": face_uv,
        "face_triangle_uvs": face_tri_uv,
        "head_triangles": head_tris.astype(np.int32),
        "head_uvs": head_uv,
        "head_triangle_uvs": head_tri_uv,
        "ict_vertex_ids": head_vertices.astype(np.int32),
        "ibug68": ibug.astype(np.int32),
        "ibug68_contour_lines": lines.astype(np.int32),
        "ibug68_lid_lines": ibug_lids.astype(np.int32),
        "ibug68_lid_points": np.asarray(LID_POINTS, np.int32),
        "ibug68_lid_upper": ibug_lid_upper,
        "mediapipe_lid_points": mp_lid_ids.astype(np.int32),
        "mediapipe_lid_lines": mp_lids.astype(np.int32),
        "mediapipe_lid_upper": mp_lid_upper,
        "region_names": np.asarray(REGION_NAMES),
        "region_labels": labels.astype(np.int8),
        "albedo_basis": albedo_basis.astype(np.float16),
        "mediapipe_vertex_ids": mp_ids,
        "mediapipe_weights": mp_w,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_npz(args.out / "face_model.npz", arrays)
    licence = (args.source / "LICENSE").read_text().strip()
    (args.out / "NOTICE").write_text(NOTICE.format(commit=args.commit, licence=licence))

    size = (args.out / "face_model.npz").stat().st_size
    digest = hashlib.sha256((args.out / "face_model.npz").read_bytes()).hexdigest()[:16]
    print(f"face topology : {n_face} vertices, {len(face_tris)} triangles, boundary loops {loops}")
    print(f"head topology : {len(head_vertices)} vertices, {len(head_tris)} triangles")
    print(f"uvs           : face {len(face_uv)}, head {len(head_uv)}")
    print(f"float16 error : {f16_err_mm:.4f} mm max (bases); mean shape float32 error {mean_err_mm:.5f} mm")
    print("mediapipe     : " + ", ".join(f"{k} {v:.2f}" for k, v in mp_stats.items()))
    print(f"ibug moved    : brows {shift_mm[:10].mean():.1f} mm, eyes {shift_mm[10:22].mean():.1f} mm, "
          f"mouth corners {shift_mm[22:].mean():.1f} mm (mean) onto MediaPipe's points")
    print("regions       : " + ", ".join(f"{n} {(labels == i).sum()}" for i, n in enumerate(REGION_NAMES)))
    print(f"asset         : {args.out / 'face_model.npz'} {size / 1e6:.2f} MB sha256 {digest}")


if __name__ == "__main__":
    main()
