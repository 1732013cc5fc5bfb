"""The linear 3D morphable face model (ICT-FaceKit, see templates/NOTICE).

``vertices = mean + identity @ B_id + expression @ B_exp`` in model space
(centimetres, axes in :mod:`densemesh.camera`). Identity coefficients are
sigma-scaled (a plausible face has each ~ N(0, 1)); expression coefficients
are ARKit-style blendshape weights in [0, 1].

Two topologies share one vertex order: the **face** (7,944 vertices, the
dense-landmark mesh) is the first ``face_num_vertices`` vertices of the
**head** (24,591 vertices incl. mouth socket, teeth and eyeballs), so a face
vertex index means the same point on both.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: The shipped asset (densemesh/templates links to the repository's templates/ folder).
ASSET = Path(__file__).resolve().parent / "templates" / "face_model.npz"
TOPOLOGIES = ("face", "head")


@dataclass
class MeshPart:
    """A piece of a face model's mesh (:meth:`FaceModel.part`): ids (V,) of its vertices in the
    model, faces (T', 3) its triangles in local ids, local (N,) model id -> local id (-1 outside),
    and its own mean (V, 3) cm and bases (100 + 53, V * 3), so decoding it costs V, not N."""

    ids: torch.Tensor
    faces: torch.Tensor
    local: torch.Tensor
    mean: torch.Tensor
    basis: torch.Tensor

    def decode(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """identity (B, 100), expression (B, 53) -> (B, V, 3) model cm."""
        coeffs = torch.cat([identity, expression], 1).to(self.mean)
        return (self.mean.reshape(-1) + coeffs @ self.basis).view(len(coeffs), -1, 3)


class FaceModel(torch.nn.Module):
    """A face model on one topology. Move it with ``.to(device)``; every output is torch.

    Attributes (torch buffers): ``mean`` (N, 3) cm, ``identity_basis`` (100, N, 3) cm per unit,
    ``expression_basis`` (53, N, 3) cm per unit, ``faces`` (T, 3) vertex ids, ``uvs`` (U, 2)
    in [0, 1] (OpenGL convention, v up), ``face_uvs`` (T, 3) uv ids per triangle corner,
    ``albedo_basis`` (face vertices, 40) smooth orthonormal functions on the face surface.
    """

    def __init__(self, arrays: dict, topology: str = "face"):
        super().__init__()
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}; expected one of {TOPOLOGIES}")
        self.topology = topology
        n_face = int(arrays["face_num_vertices"])
        n = n_face if topology == "face" else len(arrays["mean"])
        f32 = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
        i64 = lambda a: torch.from_numpy(np.asarray(a, np.int64))  # noqa: E731
        self.register_buffer("mean", f32(arrays["mean"][:n]))
        self.register_buffer("identity_basis", f32(arrays["identity_basis"][:, :n]))
        self.register_buffer("expression_basis", f32(arrays["expression_basis"][:, :n]))
        self.register_buffer("faces", i64(arrays[f"{topology}_triangles"]))
        self.register_buffer("uvs", f32(arrays[f"{topology}_uvs"]))
        self.register_buffer("face_uvs", i64(arrays[f"{topology}_triangle_uvs"]))
        self.register_buffer("ibug68", i64(arrays["ibug68"]))
        self.register_buffer("ibug68_contour_lines", i64(arrays["ibug68_contour_lines"]))
        self.register_buffer("ibug68_lid_lines", i64(arrays["ibug68_lid_lines"]))
        self.register_buffer("ibug68_lid_points", i64(arrays["ibug68_lid_points"]))
        self.register_buffer("mediapipe_lid_points", i64(arrays["mediapipe_lid_points"]))
        self.register_buffer("mediapipe_lid_lines", i64(arrays["mediapipe_lid_lines"]))
        self.register_buffer("mediapipe_lid_upper", torch.from_numpy(np.asarray(arrays["mediapipe_lid_upper"], bool)))
        self.register_buffer("ibug68_lid_upper", torch.from_numpy(np.asarray(arrays["ibug68_lid_upper"], bool)))
        self.register_buffer("mediapipe_vertex_ids", i64(arrays["mediapipe_vertex_ids"]))
        self.register_buffer("mediapipe_weights", f32(arrays["mediapipe_weights"]))
        self.register_buffer("albedo_basis", f32(arrays["albedo_basis"]))  # (face vertices, 40)
        self.expression_names: list[str] = [str(s) for s in arrays["expression_names"]]
        self.region_names: list[str] = [str(s) for s in arrays["region_names"]]
        self.face_num_vertices = n_face
        labels = np.full(n, -1, np.int64)
        labels[:n_face] = arrays["region_labels"]
        self.register_buffer("region_labels", torch.from_numpy(labels))

    @classmethod
    def load(cls, topology: str = "face", path: str | Path | None = None) -> "FaceModel":
        """Load the shipped asset (or ``path``) on the CPU for ``topology`` "face" or "head"."""
        with np.load(path or ASSET) as z:
            arrays = {k: z[k] for k in z.files}
        return cls(arrays, topology)

    @property
    def num_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def num_identity(self) -> int:
        return self.identity_basis.shape[0]

    @property
    def num_expression(self) -> int:
        return self.expression_basis.shape[0]

    def decode(self, identity: torch.Tensor | None = None, expression: torch.Tensor | None = None,
               vertices: torch.Tensor | None = None) -> torch.Tensor:
        """identity (B, 100), expression (B, 53) -> vertices (B, N, 3) in model cm.

        Either may be None (zeros); B comes from whichever is given (1 if neither).
        vertices: indices (V,) to decode only those -> (B, V, 3).
        Differentiable; runs on the model's device and dtype.
        """
        pick = slice(None) if vertices is None else vertices
        batch = next((x.shape[0] for x in (identity, expression) if x is not None), 1)
        out = self.mean[pick].expand(batch, -1, -1)
        if identity is not None:
            out = out + torch.einsum("bk,knc->bnc", identity.to(self.mean), self.identity_basis[:, pick])
        if expression is not None:
            out = out + torch.einsum("bk,knc->bnc", expression.to(self.mean), self.expression_basis[:, pick])
        return out

    def expression_vector(self, weights: dict[str, float], batch: int = 1) -> torch.Tensor:
        """{"jawOpen": 0.6, ...} -> (batch, 53) coefficients. Unknown names raise KeyError."""
        out = torch.zeros(batch, self.num_expression).to(self.mean)
        for name, value in weights.items():
            if name not in self.expression_names:
                raise KeyError(f"unknown expression {name!r}")
            out[:, self.expression_names.index(name)] = value
        return out

    def landmarks(self, vertices: torch.Tensor, kind: str = "ibug68") -> torch.Tensor:
        """Landmark points of decoded vertices (B, N, 3) (or (B, N, 2) projected).

        kind "ibug68" -> (B, 68, C), the iBUG/Multi-PIE 68 vertices (0-16 jaw, 17-26 brows,
        27-35 nose, 36-47 eyes, 48-67 mouth; fixed surface points, see
        :meth:`contour_landmarks` for the visible jaw line); "mediapipe" -> (B, 468, C), MediaPipe
        FaceMesh points 0-467 as barycentric points of the surface (the 10 iris points are not
        on the face surface).
        """
        if kind == "ibug68":
            return vertices[:, self.ibug68]
        if kind == "mediapipe":
            corners = vertices[:, self.mediapipe_vertex_ids]  # (B, 468, 3, C)
            return (corners * self.mediapipe_weights[None, :, :, None]).sum(2)
        raise ValueError(f"unknown landmark set {kind!r}; expected 'ibug68' or 'mediapipe'")

    def contour_landmarks(self, vertices_camera: torch.Tensor, points_2d: torch.Tensor,
                          facing: torch.Tensor | None = None) -> torch.Tensor:
        """iBUG-68 vertex ids with the jaw and upper-lid points moved onto the visible outlines.

        vertices_camera (B, N, 3) camera cm, points_2d (B, N, 2) their projections in pixels,
        facing (B, N) as :func:`facing` gives (computed when not given). Jaw (0-16): a vertex that faces away from the camera (the side of the face turning away)
        is replaced by the candidate on its contour line that faces the camera and lies furthest
        out on its side of the face in the image - the silhouette, where annotators put the jaw
        line at large yaw; visible jaw vertices stay. Eyelids (37, 38, 40, 41, 43, 44, 46, 47):
        the camera-facing point of a vertical strip through the lid that is lowest (upper lids)
        or highest (lower lids) in the image - the lid's visible edge, in front of the eye rim
        where ICT's lid curls inwards, and following the lid as the eye closes.
        -> (B, 68) long ids.
        """
        b = points_2d.shape[0]
        lines = self.ibug68_contour_lines.expand(b, -1, -1)  # (B, 17, L)
        if facing is None:
            facing = vertex_facing(vertices_camera, self.faces)
        center = points_2d[:, self.ibug68[27:31]].mean(1)  # nose bridge (B, 2)
        outward = points_2d[:, self.ibug68[:17]] - center[:, None]  # (B, 17, 2)
        outward = outward / outward.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        cand = torch.gather(points_2d, 1, lines.reshape(b, -1, 1).expand(-1, -1, 2)).view(*lines.shape, 2)
        reach = ((cand - center[:, None, None]) * outward[:, :, None]).sum(-1)  # (B, 17, L)
        reach = torch.where(torch.gather(facing, 1, lines.reshape(b, -1)).view_as(reach) < 0, reach,
                            torch.full_like(reach, -float("inf")))
        outline = torch.gather(lines, 2, reach.argmax(-1, keepdim=True))[..., 0]  # (B, 17)
        ids = self.ibug68.expand(b, -1).clone()
        hidden = facing[:, self.ibug68[:17]] >= 0.25
        ids[:, :17] = torch.where(hidden, outline, ids[:, :17])
        ids[:, self.ibug68_lid_points] = self.visible_lid_vertices(self.ibug68_lid_lines, self.ibug68_lid_upper,
                                                                    vertices_camera, points_2d, facing)
        return ids

    def visible_lid_vertices(self, lines: torch.Tensor, upper: torch.Tensor, vertices_camera: torch.Tensor,
                             points_2d: torch.Tensor, facing: torch.Tensor | None = None) -> torch.Tensor:
        """The visible edge of the eyelids along lid columns (see :func:`lid_edge`).

        lines (M, L) vertex ids (asset: ``ibug68_lid_lines``, ``mediapipe_lid_lines``), upper (M,)
        bool, vertices_camera (B, N, 3) cm, points_2d (B, N, 2) px -> (B, M) vertex ids.
        """
        if facing is None:
            facing = vertex_facing(vertices_camera, self.faces)
        corners = points_2d[:, self.ibug68[[36, 45]]]
        pick = lid_edge(points_2d[:, lines], facing[:, lines], upper, corners)
        return torch.gather(lines.expand(points_2d.shape[0], -1, -1), 2, pick[..., None])[..., 0]

    def mirror_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's left-right mirror (model x -> -x; ICT is symmetric) in coefficient space,
        on the CPU: ``identity`` (100, 100) with ``mirror(decode(c)) ~ decode(c @ identity.T)``
        (least squares over the basis, 0.5 % residual; vertices paired by the nearest neighbour
        of the mean face's mirror image); ``expression`` (53,) long, the ARKit left / right
        partner of each blendshape. Computed once per model."""
        if getattr(self, "_mirror", None) is None:
            flip = torch.tensor([-1.0, 1.0, 1.0])
            mean = self.mean.cpu()
            partner_vertex = torch.cat([torch.cdist(part, mean).argmin(1) for part in (mean * flip).split(1024)])
            k = self.num_identity
            basis = self.identity_basis.cpu().double().reshape(k, -1).numpy()  # (K, 3N)
            mirrored = (self.identity_basis.cpu()[:, partner_vertex] * flip).double().reshape(k, -1).numpy()
            identity = np.linalg.solve(basis @ basis.T, basis @ mirrored.T)  # normal equations
            swap = {"_L": "_R", "_R": "_L", "Left": "Right", "Right": "Left"}
            partner = [next((n[: -len(a)] + b for a, b in swap.items() if n.endswith(a)), n)
                       for n in self.expression_names]
            self._mirror = (torch.as_tensor(identity, dtype=torch.float32),
                            torch.tensor([self.expression_names.index(n) for n in partner]))
        return self._mirror

    def part(self, vertices: torch.Tensor, extra: torch.Tensor | None = None) -> MeshPart:
        """The piece of the mesh round ``vertices`` (ids, any shape): every triangle touching
        them, with the vertices of ``extra`` added - enough for the normals at ``vertices``
        without decoding the whole face (see :class:`MeshPart`)."""
        touching = torch.isin(self.faces, vertices.flatten()).any(1)
        parts = [self.faces[touching].flatten()] + ([] if extra is None else [extra.flatten()])
        ids = torch.unique(torch.cat(parts))
        local = torch.full((self.num_vertices,), -1, dtype=torch.long, device=ids.device)
        local[ids] = torch.arange(len(ids), device=ids.device)
        basis = torch.cat([self.identity_basis[:, ids], self.expression_basis[:, ids]]).reshape(-1, len(ids) * 3)
        return MeshPart(ids, local[self.faces[touching]], local, self.mean[ids], basis)

    def mediapipe_part(self) -> MeshPart:
        """The :meth:`part` round the vertices MediaPipe's 468 points lie between, made once per
        model (their facing is needed every tracked frame; decoding only it: 1.9 -> 0.6 ms)."""
        if getattr(self, "_mediapipe_part", None) is None:
            self._mediapipe_part = self.part(self.mediapipe_vertex_ids)
        return self._mediapipe_part

    def region_mask(self, name: str) -> torch.Tensor:
        """(N,) bool: vertices of a region ("forehead", "brow_left", "eye_right", "nose", "mouth",
        "cheek_left", "jaw", ...; see ``region_names``). Head-only vertices belong to none."""
        if name not in self.region_names:
            raise ValueError(f"unknown region {name!r}; expected one of {self.region_names}")
        return self.region_labels == self.region_names.index(name)


@functools.lru_cache(maxsize=16)
def _incidence(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """(N, T) sparse CSR vertex-triangle incidence (1 where the vertex is a corner) of a face list;
    cached per faces tensor (topologies are fixed). Summing face normals with it is 3-4x faster on
    the CPU than scattering them (index_add), forward and backward."""
    corners = faces.flatten()
    order = torch.argsort(corners, stable=True)
    rows = torch.cat([corners.new_zeros(1), torch.bincount(corners, minlength=num_vertices).cumsum(0)])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul with a dense matrix is all we use
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(rows, order // 3, torch.ones(len(corners), device=faces.device),
                                       (num_vertices, len(faces)))


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) vertices, (T, 3) faces -> (B, N, 3) unit area-weighted vertex normals (outward
    for ICT's winding; in the vertices' own space)."""
    b, n = vertices.shape[:2]
    tri = vertices[:, faces]  # (B, T, 3, 3)
    face_n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    normals = (_incidence(faces, n) @ face_n.to(torch.float32).transpose(0, 1).reshape(len(faces), b * 3))
    normals = normals.reshape(n, b, 3).transpose(0, 1).to(vertices.dtype)
    return normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def vertex_facing(vertices_camera: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) camera-space vertices -> (B, N) cosine between each normal and the ray from the
    camera to the vertex: < 0 faces the camera, > 0 faces away, 0 on the silhouette."""
    view = vertices_camera / vertices_camera.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return (vertex_normals(vertices_camera, faces) * view).sum(-1)


def lid_edge(points_2d: torch.Tensor, facing: torch.Tensor, upper: torch.Tensor,
             eye_corners: torch.Tensor) -> torch.Tensor:
    """Where each eyelid column meets the lid's visible edge.

    points_2d (B, M, L, 2) px and facing (B, M, L) (< 0: towards the camera) of M columns of L
    vertices, upper (M,) bool, eye_corners (B, 2, 2) px of the outer eye corners (right, left).
    ICT's lid surface runs from the lid skin over the visible edge and curls back to the eye rim,
    so the edge is the column's camera-facing vertex lowest in the image (upper lids) or highest
    (lower lids), "down" being perpendicular to the corner-to-corner line. -> (B, M) index in L.
    """
    across = eye_corners[:, 1] - eye_corners[:, 0]
    down = torch.stack([-across[:, 1], across[:, 0]], -1)  # image y grows downwards
    sign = torch.where(upper, 1.0, -1.0).to(points_2d)[None, :, None]
    depth = (points_2d * down[:, None, None]).sum(-1) * sign
    return torch.where(facing < 0, depth, torch.full_like(depth, -float("inf"))).argmax(-1)
