"""Fitting the face model to an image: landmark fit (Gauss-Newton) and photometric refinement.

Landmark fit
    Unknowns per face: rotation R, translation t (camera cm), identity (100), expression (53,
    box-constrained to [0, 1]). Data: MediaPipe's 468 FaceMesh points, matched to the face
    surface through the asset's barycentric correspondence. Residuals are pixel errors divided
    by the face size, weighted per point (the face-oval points, which MediaPipe places least
    reliably, count half). Priors: identity ~ N(0, 1); expression ~ N(MediaPipe's blendshape
    scores mapped onto ICT's names, ``expression_sigma``). Levenberg-Marquardt with analytic
    Jacobians, batched over faces; one focal length per image (``camera_distance_cm`` puts
    the largest face at that distance). See :class:`FitConfig`.

Photometric refinement (:func:`refine`) lives here too; the rasteriser and shading are in
:mod:`densemesh.render`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from densemesh import camera
from densemesh.detect import MEDIAPIPE_BLENDSHAPES, Detection
from densemesh.facemodel import lid_edge, vertex_facing, vertex_normals

#: MediaPipe FaceMesh face-oval points (its public FACE_OVAL connection list).
MEDIAPIPE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
                  377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


@dataclass
class FitConfig:
    """Landmark-fit settings (weights are relative to landmark residuals in face-size units)."""

    iterations: int = 3                # from the network's start (eval_landmarks: 2 cost einstein 0.2 % NME, 4 = 3)
    tracking_iterations: int = 2       # from the previous video frame: 2 reach the cost of 20 (tested)
    landmark_sigma: float = 0.03       # expected landmark error, fraction of the face size
    oval_weight: float = 0.5           # weight of MediaPipe's face-oval points
    identity_sigma: float = 1.0        # identity prior N(0, sigma)
    expression_sigma: float = 0.5      # expression prior around MediaPipe's blendshape scores
    camera_distance_cm: float = 60.0   # assumed distance of the largest face (sets the focal)


@dataclass
class FitState:
    """Batched fit parameters and camera. rotation (B, 3, 3) model rotation (see camera.py),
    translation (B, 3) cm, identity (B, 100), expression (B, 53), focal (B,) px,
    principal (B, 2) px, cost (B,) final landmark cost (mean squared face-size units), fitted (B,)
    bool: the landmark fit decided (False: the network's answer alone)."""

    rotation: torch.Tensor
    translation: torch.Tensor
    identity: torch.Tensor
    expression: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    cost: torch.Tensor | None = None
    fitted: torch.Tensor | None = None

    FIELDS = ("rotation", "translation", "identity", "expression", "focal", "principal")

    def select(self, i: int) -> "FitState":
        """Face i as a batch of one."""
        return self.select_rows([i])

    def select_rows(self, rows: list[int]) -> "FitState":
        """The faces ``rows`` as a new batch (copies)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.rotation.device)
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731  (a copy)
        return FitState(*(pick(getattr(self, f)) for f in self.FIELDS), cost=pick(self.cost), fitted=pick(self.fitted))

    def with_rows(self, rows: list[int], other: "FitState") -> "FitState":
        """A copy with faces ``rows`` replaced by the batch ``other`` (same order); a face
        without a landmark cost has cost NaN."""
        out = self.select_rows(list(range(len(self.rotation))))
        for f in self.FIELDS:
            getattr(out, f)[rows] = getattr(other, f).to(getattr(out, f))
        if other.cost is not None:
            if out.cost is None:
                out.cost = torch.full_like(out.focal, float("nan"))
            out.cost[rows] = other.cost.to(out.cost)
        return out

    def blend(self, other: "FitState", share: torch.Tensor, identity: bool = True) -> "FitState":
        """``share`` (B,) x this state + (1 - share) x ``other`` (same faces, same camera):
        rotations by the nearest rotation of the weighted sum; translation, expression and
        (unless ``identity`` is False) identity linearly; the cost stays this state's."""
        def mix(a, b):
            w = share.to(a).view(-1, *[1] * (a.dim() - 1))
            return w * a + (1.0 - w) * b.to(a)
        return FitState(camera.nearest_rotation(mix(self.rotation, other.rotation)),
                        mix(self.translation, other.translation),
                        mix(self.identity, other.identity) if identity else self.identity.clone(),
                        mix(self.expression, other.expression).clamp(0.0, 1.0), self.focal, self.principal, self.cost)

    @staticmethod
    def stack(states: list["FitState"]) -> "FitState":
        """Concatenate batches."""
        fitted = None if any(s.fitted is None for s in states) else torch.cat([s.fitted for s in states])
        return FitState(*(torch.cat([getattr(s, f) for s in states]) for f in FitState.FIELDS), fitted=fitted)


def mediapipe_expression_prior(scores: np.ndarray, expression_names: list[str]) -> np.ndarray:
    """(B, 52) MediaPipe blendshape scores -> (B, 53) ICT expression weights.

    ICT's ``X_L`` / ``X_R`` are MediaPipe's ``XLeft`` / ``XRight`` (both the subject's side);
    ICT splits ``browInnerUp`` and ``cheekPuff`` into halves, which both take the one score.
    """
    scores = np.asarray(scores, np.float64).reshape(-1, len(MEDIAPIPE_BLENDSHAPES))
    index = {n: i for i, n in enumerate(MEDIAPIPE_BLENDSHAPES)}
    out = np.zeros((len(scores), len(expression_names)))
    for j, name in enumerate(expression_names):
        base, side = (name[:-2], name[-1]) if name[-2:] in ("_L", "_R") else (name, "")
        key = base + {"L": "Left", "R": "Right", "": ""}[side]
        out[:, j] = scores[:, index[key] if key in index else index[base]]
    return out


def mediapipe_rotations(detections: list[Detection]) -> torch.Tensor:
    """(B, 3, 3) model rotations of MediaPipe's head transforms (made orthonormal)."""
    return camera.nearest_rotation(torch.tensor(np.stack([d.transform[:3, :3] for d in detections]),
                                                dtype=torch.float64)).float()


def _apply_basis(basis: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """basis (B, K, 3, P), coeffs (B, P) -> (B, K, 3) offsets (one matrix product per face)."""
    b, k, c, p = basis.shape
    return (basis.reshape(b, k * c, p) @ coeffs[..., None]).view(b, k, c)


def _bounded_step(h: torch.Tensor, grad: torch.Tensor, expression: torch.Tensor, passes: int = 8) -> torch.Tensor:
    """(B, N) step minimising the damped Gauss-Newton model 0.5 s'hs + grad's (h (B, N, N),
    grad (B, N)) with the last E unknowns, the expression weights ``expression`` (B, E), kept in
    [0, 1]. The free unknowns (pose, identity) are eliminated first (Schur complement), so the
    bounded search (:func:`_box_step`) solves E x E systems, not N x N. A step clamped afterwards
    is no longer a Gauss-Newton step: in tracking, the trials that crossed a bound were the ones
    rejected (two of five iterations lost a frame)."""
    n_exp = expression.shape[1]
    a, b, c = h[:, :-n_exp, :-n_exp], h[:, :-n_exp, -n_exp:], h[:, -n_exp:, -n_exp:]
    solved = torch.cholesky_solve(torch.cat([b, grad[:, :-n_exp, None]], 2), torch.linalg.cholesky(a))
    a_inv_b, a_inv_g = solved[..., :-1], solved[..., -1:]  # A^-1 B (B, F, E), A^-1 g_free (B, F, 1)
    bt = b.transpose(1, 2)
    s_exp = _box_step(c - bt @ a_inv_b, grad[:, -n_exp:] - (bt @ a_inv_g)[..., 0], -expression, 1.0 - expression,
                      passes)
    s_free = -(a_inv_g + a_inv_b @ s_exp[..., None])[..., 0]
    return torch.cat([s_free, s_exp], 1)


def _box_step(h: torch.Tensor, grad: torch.Tensor, low: torch.Tensor, high: torch.Tensor, passes: int) -> torch.Tensor:
    """(B, E) minimiser of 0.5 s'hs + grad's with low <= s <= high (h (B, E, E) positive
    definite): a primal-dual active set - unknowns the step carries past a bound are held on it,
    held ones the model pulls back inside are let go; up to ``passes`` solves (1-4 in tracking)."""
    at_low, at_high = (low >= 0) & (grad > 0), (high <= 0) & (grad < 0)  # the model pushes them out
    for _ in range(passes):
        held = at_low | at_high
        bound = torch.where(at_low, low, torch.where(at_high, high, torch.zeros_like(low)))
        free = ~held
        system = h * (free[:, :, None] & free[:, None, :]) + torch.diag_embed(held.to(h))
        rhs = (grad + (h @ bound[..., None])[..., 0]) * free
        step = bound - torch.cholesky_solve(rhs[..., None], torch.linalg.cholesky(system))[..., 0] * free
        pull = (h @ step[..., None])[..., 0] + grad  # the model's slope at the step
        new_low = torch.where(at_low, pull > 0, step < low)
        new_high = torch.where(at_high, pull < 0, step > high)
        if torch.equal(new_low, at_low) and torch.equal(new_high, at_high):
            break
        at_low, at_high = new_low, new_high
    return step


class LandmarkFitter:
    """Fits the face model to MediaPipe landmarks. Holds the model's bases at the 468 points."""

    def __init__(self, model, config: FitConfig | None = None):
        self.model = model
        self.config = config or FitConfig()
        ids, w = model.mediapipe_vertex_ids, model.mediapipe_weights  # (468, 3)
        at = lambda basis: (basis[..., ids, :] * w[..., None]).sum(-2)  # noqa: E731
        self.mean_k = at(model.mean)  # (K, 3)
        shape_basis = torch.cat([model.identity_basis, model.expression_basis])  # (P, N, 3)
        self.basis_k = at(shape_basis).permute(1, 2, 0).contiguous()  # (K, 3, P)
        self.vertex_basis = shape_basis.permute(1, 2, 0).contiguous()  # (N, 3, P)
        # the lid columns' neighbourhood (their vertices, every face touching them, the outer eye
        # corners): enough to slide the lid points without decoding the whole face
        lines = model.mediapipe_lid_lines
        self._lids = model.part(lines, model.ibug68[[36, 45]])
        self._lid_lines, self._lid_corners = self._lids.local[lines], self._lids.local[model.ibug68[[36, 45]]]
        weights = torch.ones(len(ids))
        weights[list(MEDIAPIPE_OVAL)] = self.config.oval_weight
        self.point_weights = weights.to(self.mean_k)

    def initial_state(self, landmarks: torch.Tensor, rotations: torch.Tensor, expression: torch.Tensor,
                      image_size: tuple[int, int], focal: float | None = None) -> FitState:
        """Pose from a rotation guess and a weak-perspective solve; one focal for the image.

        landmarks (B, 468, 2) px, rotations (B, 3, 3) model rotation guesses, expression (B, 53)
        starting weights, image_size (height, width), focal: px (a video keeps its first frame's),
        else ``camera_distance_cm`` times the largest face's px-per-cm.
        """
        b = landmarks.shape[0]
        dev = self.mean_k
        landmarks = landmarks[:, : dev.shape[0], :2].to(dev)
        points = self.points(torch.zeros(b, self.model.num_identity).to(dev), expression.to(dev))
        turned = points @ (camera.MODEL_TO_CAMERA.to(dev) @ rotations).transpose(1, 2)  # (B, K, 3)
        xy = turned[..., :2]
        w = self.point_weights[None, :, None]
        mu_x, mu_l = (w * xy).sum(1) / w.sum(1), (w * landmarks).sum(1) / w.sum(1)
        dx, dl = xy - mu_x[:, None], landmarks - mu_l[:, None]
        scale = (w * dx * dl).sum((1, 2)) / (w * dx * dx).sum((1, 2))  # px per cm
        offset = mu_l - scale[:, None] * mu_x
        h, wd = image_size
        principal = torch.tensor([(wd - 1) / 2, (h - 1) / 2]).to(dev).expand(b, 2).clone()
        if focal is None:
            focal = self.config.camera_distance_cm * scale.max()
        focal = torch.as_tensor(focal).to(dev).expand(b).clone()
        translation = camera.weak_to_pinhole(scale, offset, principal, focal)
        return FitState(rotations.to(dev).clone(), translation, torch.zeros(b, self.model.num_identity).to(dev),
                        expression.to(dev).clone(), focal, principal)

    SLIDE_STEPS = 2  # Gauss-Newton steps that re-slide the lid correspondences

    def slide_lids(self, state: FitState) -> torch.Tensor:
        """(B, M) vertex ids where MediaPipe's M eyelid-contour points meet the posed model: the
        visible lid edge (:func:`densemesh.facemodel.lid_edge`), not a fixed surface point."""
        sub = self._lids.ids
        cam = camera.model_to_camera(self._lids.decode(state.identity, state.expression), state.rotation,
                                     state.translation)
        uv = camera.project(cam, state.focal, state.principal)
        facing = vertex_facing(cam, self._lids.faces)
        lines = self._lid_lines
        pick = lid_edge(uv[:, lines], facing[:, lines], self.model.mediapipe_lid_upper, uv[:, self._lid_corners])
        return sub[torch.gather(lines.expand(len(uv), -1, -1), 2, pick[..., None])[..., 0]]

    def _basis(self, lid_ids: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean points (B, K, 3) and basis rows (B, K, 3, P) of the K MediaPipe points, the lid
        points at ``lid_ids`` (B, M) when given, else at their fixed surface points."""
        mean = self.mean_k.expand(batch, -1, -1)
        basis = self.basis_k.expand(batch, -1, -1, -1)
        if lid_ids is None:
            return mean, basis
        mean, basis = mean.clone(), basis.clone()
        rows = self.model.mediapipe_lid_points
        mean[:, rows] = self.model.mean[lid_ids]
        basis[:, rows] = self.vertex_basis[lid_ids]
        return mean, basis

    def points(self, identity: torch.Tensor, expression: torch.Tensor,
               lid_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 100), (B, 53)[, lid vertex ids (B, M)] -> (B, K, 3) model-space MediaPipe points."""
        mean, basis = self._basis(lid_ids, identity.shape[0])
        return mean + _apply_basis(basis, torch.cat([identity, expression], 1))

    def _residuals(self, state: FitState, target: torch.Tensor, scale: torch.Tensor, prior_expression: torch.Tensor,
                   points: tuple[torch.Tensor, torch.Tensor], with_jacobian: bool):
        """Weighted landmark residuals (B, 2K), prior residuals (B, P) and, if asked, the
        landmark Jacobian (B, 2K, 6 + P') (the priors' Jacobian is diagonal: 1 / sigma).
        scale (B, K, 1): each point's residual weight (:meth:`_point_scale`); points: the
        MediaPipe points' mean (B, K, 3) and basis rows (B, K, 3, P') for the solved shape
        coefficients, as :meth:`_points` gives them (P' = 53 when the identity is fixed)."""
        cfg = self.config
        mean, basis = points
        fixed = basis.shape[-1] == state.expression.shape[1]
        x_model = mean + _apply_basis(basis, state.expression if fixed else
                                      torch.cat([state.identity, state.expression], 1))
        rc = camera.MODEL_TO_CAMERA.to(x_model) @ state.rotation
        xc = x_model @ rc.transpose(1, 2) + state.translation[:, None]
        z = xc[..., 2:].clamp(min=1e-3)
        normalized = xc[..., :2] / z
        uv = state.focal[:, None, None] * normalized + state.principal[:, None]
        r_lm = ((uv - target) * scale).flatten(1)  # (B, 2K)
        r_prior = torch.cat([state.identity / cfg.identity_sigma,
                             (state.expression - prior_expression) / cfg.expression_sigma], 1)
        if not with_jacobian:
            return r_lm, r_prior, None
        f_z = state.focal[:, None, None, None] / z[..., None]  # (B, K, 1, 1)
        eye = torch.eye(2, dtype=xc.dtype, device=xc.device).expand(*normalized.shape[:2], 2, 2)
        dproj = f_z * torch.cat([eye, -normalized[..., None]], -1)  # (B, K, 2, 3)
        d_rot = torch.linalg.cross((xc - state.translation[:, None])[..., None, :].expand_as(dproj), dproj)
        d_shape = ((dproj @ rc[:, None])[..., None] * basis[:, :, None]).sum(-2)  # (B, K, 2, P'); beats 468 tiny bmm
        j_lm = torch.cat([d_rot, dproj, d_shape], -1) * scale[..., None]  # (B, K, 2, 6 + P')
        return r_lm, r_prior, j_lm.flatten(1, 2)

    def _point_scale(self, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """(B, K, 1) residual weight of each point: sqrt(point weight) / (landmark_sigma * face
        size px); target (B, K, 2) px, weights (B, K) per-face weights on top of the fixed ones."""
        size = (target.max(1).values - target.min(1).values).prod(1).sqrt()  # face size, px
        w = self.point_weights[None] if weights is None else self.point_weights[None] * weights
        return w.sqrt()[..., None] / (self.config.landmark_sigma * size[:, None, None])

    def _points(self, state: FitState, fix_identity: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The MediaPipe points' mean (B, K, 3) and basis rows (B, K, 3, P') for the shape
        coefficients solved, with the lids slid to ``state`` (:meth:`slide_lids`): with
        ``fix_identity`` the identity is folded into the mean and P' = 53 (expression only)."""
        mean, basis = self._basis(self.slide_lids(state), len(state.identity))
        if not fix_identity:
            return mean, basis
        n_id = self.model.num_identity
        return mean + _apply_basis(basis[..., :n_id], state.identity), basis[..., n_id:]

    def _apply(self, state: FitState, delta: torch.Tensor) -> FitState:
        flip = camera.MODEL_TO_CAMERA.to(delta)
        turn = camera.axis_angle_to_matrix(delta[:, :3])
        n_id = self.model.num_identity
        return FitState(flip @ turn @ flip @ state.rotation, state.translation + delta[:, 3:6],
                        state.identity + delta[:, 6:6 + n_id],
                        (state.expression + delta[:, 6 + n_id:]).clamp(0.0, 1.0),
                        state.focal, state.principal)

    def fit(self, landmarks: torch.Tensor, state: FitState, prior_expression: torch.Tensor,
            iterations: int | None = None, fix_identity: bool = False,
            weights: torch.Tensor | None = None) -> FitState:
        """Levenberg-Marquardt; the lid correspondences slide with the first ``SLIDE_STEPS`` steps
        (ICP-style; later steps barely move the lids).
        landmarks (B, 468, 2) px; ``fix_identity`` keeps ``state.identity`` (a video track's locked
        identity) and solves pose and expression only; weights (B, 468) scale each face's points
        (0: left out, e.g. hidden under the network's pose). Returns the fitted state (with cost)."""
        target = landmarks[:, : self.mean_k.shape[0], :2].to(self.mean_k)
        scale = self._point_scale(target, weights)
        prior = prior_expression.to(self.mean_k)
        damping = torch.full((target.shape[0],), 1e-3).to(target)
        n_exp = state.expression.shape[1]
        n_id = self.model.num_identity
        inv_sigma = torch.cat([torch.zeros(6), torch.full((n_id,), 1 / self.config.identity_sigma),
                               torch.full((n_exp,), 1 / self.config.expression_sigma)]).to(target)
        # unknowns: pose (6), identity (unless fixed), expression
        cols = torch.cat([torch.arange(6), torch.arange(6 + n_id * fix_identity, 6 + n_id + n_exp)]).to(target.device)
        b = target.shape[0]
        prior_h = torch.diag_embed(inv_sigma[cols] ** 2)
        cost = None
        for step in range(self.config.iterations if iterations is None else iterations):
            if step < self.SLIDE_STEPS:
                points = self._points(state, fix_identity)
                cost = None  # the correspondences changed: the cost with them is new
            r_lm, r_prior, jac = self._residuals(state, target, scale, prior, points, True)
            if cost is None:
                cost = (r_lm ** 2).sum(1) + (r_prior ** 2).sum(1)
            jt = jac.transpose(1, 2)
            h = jt @ jac + prior_h
            grad = (jt @ r_lm[..., None])[..., 0] + (torch.nn.functional.pad(r_prior, (6, 0)) * inv_sigma)[:, cols]
            h = h + damping[:, None, None] * torch.diag_embed(h.diagonal(dim1=1, dim2=2) + 1e-6)
            delta = torch.zeros(b, 6 + n_id + n_exp).to(target)
            delta[:, cols] = _bounded_step(h, grad, state.expression)
            trial = self._apply(state, delta)
            r_lm_t, r_prior_t, _ = self._residuals(trial, target, scale, prior, points, False)
            cost_t = (r_lm_t ** 2).sum(1) + (r_prior_t ** 2).sum(1)
            better = cost_t < cost
            cost = torch.where(better, cost_t, cost)
            keep = lambda new, old: torch.where(better.view(-1, *[1] * (new.dim() - 1)), new, old)  # noqa: E731
            state = FitState(*(keep(n, o) for n, o in zip(
                (trial.rotation, trial.translation, trial.identity, trial.expression),
                (state.rotation, state.translation, state.identity, state.expression))),
                state.focal, state.principal)
            damping = torch.where(better, damping * 0.3, damping * 10.0).clamp(1e-6, 1e4)
        if cost is None:  # no iterations
            r_lm, r_prior, _ = self._residuals(state, target, scale, prior, self._points(state, fix_identity), False)
            cost = (r_lm ** 2).sum(1) + (r_prior ** 2).sum(1)
        state.cost = cost / target.shape[1]
        return state


@dataclass
class RefineConfig:
    """Photometric refinement settings for one ``refine`` level (see :data:`REFINE_LEVELS`)."""

    iterations: int
    crop_size: int                     # px, square crop around each face
    raster_every: int = 5              # re-rasterise (visibility / pixel-to-face) every n steps
    photometric_weight: float = 2.0    # robust colour error (RGB in [0, 1]) vs. landmark cost
    expression_sigma: float = 0.15     # how far expressions may move from the landmark fit
    albedo_sigma: float = 0.3          # prior on the smooth albedo coefficients
    learning_rate: float = 0.01


#: ``refine`` levels: "none" = landmark fit only; "fast" = 30 Adam steps on 128 px crops;
#: "full" = 80 steps on 224 px crops.
REFINE_LEVELS = {"none": None, "fast": RefineConfig(30, 128), "full": RefineConfig(80, 224)}
SKIN_EXCLUDED_REGIONS = ("eye_left", "eye_right", "brow_left", "brow_right")


def refine(fitter: LandmarkFitter, images: list[np.ndarray], state: FitState, landmarks: torch.Tensor,
           config: RefineConfig, fix_identity: bool = False,
           weights: torch.Tensor | None = None) -> tuple[FitState, dict]:
    """Analysis-by-synthesis: render each face (rasteriser of :mod:`densemesh.render`, 9-term SH
    lighting per colour channel, smooth albedo from the asset's Laplacian basis) into a crop of the
    photo and minimise the robust colour error on the visible skin (eyes and brows excluded)
    together with the landmark and prior terms of the landmark fit (Adam, all faces batched).

    images: the (H, W, 3) uint8 image of each face (faces of several video frames batch
    together); landmarks (B, 478, 2) px; state: the landmark fit's result; ``fix_identity`` keeps
    the state's identity; weights (B, 468): per-face point weights as in :meth:`LandmarkFitter.fit`.
    Returns the refined state and {"photometric_before", "photometric_after"}: (B,) mean robust
    colour error on the rendered skin.
    """
    from densemesh import render
    from densemesh.crop import crop_square, square_box

    model, cfg = fitter.model, fitter.config
    dev = fitter.mean_k
    b = state.identity.shape[0]
    faces = model.faces
    flip = camera.MODEL_TO_CAMERA.to(dev)
    with torch.no_grad():
        uv0 = camera.project(camera.model_to_camera(model.decode(state.identity, state.expression),
                                                    state.rotation, state.translation), state.focal, state.principal)
    crops = [crop_square(images[i], square_box(uv0[i].cpu().numpy(), 1.05), config.crop_size) for i in range(b)]
    target = torch.from_numpy(np.stack([c.image for c in crops])).to(dev) / 255.0  # (B, S, S, 3)
    k = torch.tensor([c.scale for c in crops]).to(dev)
    focal_c = state.focal * k
    principal_c = state.principal * k[:, None] + torch.from_numpy(np.stack([c.offset for c in crops])).to(dev)
    size_px = (config.crop_size, config.crop_size)

    skin = torch.ones(b, model.num_vertices, 1).to(dev)
    for name in SKIN_EXCLUDED_REGIONS:
        skin[:, model.region_mask(name)] = 0.0
    basis = model.albedo_basis[: model.num_vertices]  # (N, K)
    lm_target = landmarks[:, : fitter.mean_k.shape[0], :2].to(dev)
    face_size = (lm_target.max(1).values - lm_target.min(1).values).prod(1).sqrt()
    w = fitter.point_weights[None] if weights is None else fitter.point_weights[None] * weights.to(dev)
    lm_scale = w.sqrt()[..., None] / (cfg.landmark_sigma * face_size[:, None, None])
    n_res = 2 * fitter.mean_k.shape[0]
    lid_ids = fitter.slide_lids(state)  # held for the refinement: lids barely move in it

    a0 = render.sh_basis(torch.tensor([0.0, 0.0, 1.0]))[0].item()
    params = {"rot": torch.zeros(b, 3), "trans": torch.zeros(b, 3), "identity": state.identity.clone(),
              "expression": state.expression.clone(), "sh": torch.zeros(b, 9, 3),
              "albedo": torch.zeros(b, basis.shape[1], 3), "base": torch.full((b, 3), 0.5)}
    params = {n: p.to(dev).requires_grad_(not (fix_identity and n == "identity")) for n, p in params.items()}
    with torch.no_grad():
        params["sh"][:, 0] = 1.0 / a0  # ambient light of 1: radiance = albedo
    lr = config.learning_rate
    optim = torch.optim.Adam([
        {"params": [params["rot"]], "lr": lr * 0.2}, {"params": [params["trans"]], "lr": lr * 3},
        {"params": [params["identity"]], "lr": lr * 3}, {"params": [params["expression"]], "lr": lr},
        {"params": [params["sh"], params["albedo"], params["base"]], "lr": lr * 3}])

    def pose():
        return (flip @ camera.axis_angle_to_matrix(params["rot"]) @ flip @ state.rotation,
                state.translation + params["trans"])

    def evaluate(pix_to_face):
        """-> (B,) photometric error, scalar loss."""
        rotation, translation = pose()
        cam = camera.model_to_camera(model.decode(params["identity"], params["expression"]), rotation, translation)
        bary = render.barycentrics(cam, faces, focal_c, principal_c, pix_to_face)
        albedo = params["base"][:, None] + basis[None] @ params["albedo"]  # (B, N, 3)
        color = render.shade(albedo, vertex_normals(cam, faces), params["sh"])
        pixels = render.interpolate(pix_to_face, bary, faces, torch.cat([color, skin], -1))
        mask = (pixels[..., 3] > 0.5).float()
        err = ((pixels[..., :3] - target) ** 2 + 1e-4).sum(-1).sqrt()  # robust (Charbonnier)
        photo = (err * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)
        pts = camera.model_to_camera(fitter.points(params["identity"], params["expression"], lid_ids),
                                     rotation, translation)
        lm_cost = (((camera.project(pts, state.focal, state.principal) - lm_target) * lm_scale) ** 2).sum((1, 2))
        prior = ((params["identity"] / cfg.identity_sigma) ** 2).sum(1) \
            + (((params["expression"] - state.expression) / config.expression_sigma) ** 2).sum(1) \
            + ((params["albedo"] / config.albedo_sigma) ** 2).sum((1, 2))
        return photo, ((lm_cost + prior) / n_res + config.photometric_weight * photo).sum()

    def raster():
        with torch.no_grad():
            rotation, translation = pose()
            cam = camera.model_to_camera(model.decode(params["identity"], params["expression"]), rotation, translation)
            return render.rasterize(cam, faces, focal_c, principal_c, size_px).pix_to_face

    pix_to_face = raster()
    with torch.no_grad():  # starting albedo: mean colour of the covered skin
        covered = (render.interpolate(pix_to_face, (pix_to_face >= 0)[..., None].float().expand(-1, -1, -1, 3) / 3,
                                      faces, skin)[..., 0] > 0.5)
        for i in range(b):
            if covered[i].any():
                params["base"][i] = target[i][covered[i]].mean(0)
        photo_before = evaluate(pix_to_face)[0]
    for step in range(config.iterations):
        if step and step % config.raster_every == 0:
            pix_to_face = raster()
        optim.zero_grad()
        evaluate(pix_to_face)[1].backward()
        optim.step()
        with torch.no_grad():
            params["expression"].clamp_(0.0, 1.0)
    with torch.no_grad():
        pix_to_face = raster()
        photo_after = evaluate(pix_to_face)[0]
        rotation, translation = pose()
    refined = FitState(rotation.detach(), translation.detach(), params["identity"].detach(),
                       params["expression"].detach(), state.focal, state.principal, state.cost)
    return refined, {"photometric_before": photo_before.cpu().numpy(), "photometric_after": photo_after.cpu().numpy()}


def fit_detections(fitter: LandmarkFitter, images: list[np.ndarray], detections: list[Detection],
                   start: FitState | None, level: RefineConfig | None, tracking: bool = False,
                   identities: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                   focal: float | None = None,
                   blend: Callable[[FitState], FitState] | None = None) -> tuple[FitState, dict]:
    """The landmark fit of detections with MediaPipe landmarks, refined at ``level`` (None: not)
    -> (FitState, timings in s).

    images: the (H, W, 3) uint8 image of each detection (one size); start: where to start (the
    network's answer, or with ``tracking`` a previous frame's fit: fewer iterations), else
    MediaPipe's head transforms and a weak-perspective solve at ``focal`` px (None: chosen);
    identities (B, 100): kept fixed; weights (B, 468): per-point weights of MediaPipe's points;
    blend: applied to the landmark fit's result before refinement (e.g. averaging it with the
    network's answer, :func:`densemesh.trust.blend`).
    """
    dev = fitter.model.mean.device
    lm = torch.tensor(np.stack([d.landmarks[:, :2] for d in detections]), dtype=torch.float32, device=dev)
    prior = torch.tensor(mediapipe_expression_prior(np.stack([d.blendshapes for d in detections]),
                                                    fitter.model.expression_names), dtype=torch.float32, device=dev)
    if start is None:
        start = fitter.initial_state(lm, mediapipe_rotations(detections).to(dev), prior, images[0].shape[:2], focal)
    if identities is not None:
        start.identity = identities.to(dev, torch.float32).clone()
    fix = identities is not None
    t0 = time.perf_counter()
    state = fitter.fit(lm, start, prior, fitter.config.tracking_iterations if tracking else None,
                       fix_identity=fix, weights=weights)
    if blend is not None:
        state = blend(state)
    timings = {"fit_s": time.perf_counter() - t0}
    if level is not None:
        t0 = time.perf_counter()
        state, stats = refine(fitter, images, state, lm, level, fix_identity=fix, weights=weights)
        timings["refine_s"] = time.perf_counter() - t0
        timings.update({k: v.tolist() for k, v in stats.items()})
    return state, timings
