"""Level of detail for rendering: visual meshes decimated on their way into a GL context.

Software GL (llvmpipe, every CPU render here) is bound by vertex work, not pixels: the Panda's visual
meshes hold 167k triangles, ~85% of the 22 ms of a 64x64 agentview frame, though at that size they cover
a few hundred pixels. `meshes_at_detail(model, 0.3)` writes quadric-decimated copies (fast-simplification)
of the visual-only meshes into the model, `mujoco.Renderer` uploads those, and the model gets its own
meshes back when the block ends: the simulator never sees the change, only that renderer draws it.

Decimated: meshes that only non-colliding geoms use (contype = conaffinity = 0), without a texture, with
more than `MIN_FACES` triangles. Normals are recomputed (area-weighted per vertex; MuJoCo's upload keeps
a face's own normal at creases, as it does for every untextured mesh).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

MIN_FACES = 200  # a box or a finger pad: nothing worth removing
_ARRAYS = ("mesh_vert", "mesh_normal", "mesh_face", "mesh_facenormal", "mesh_facenum", "mesh_texcoordadr")


def check_detail(detail: float) -> float:
    detail = float(detail)
    if not 0.0 < detail <= 1.0:
        raise ValueError(f"mesh_detail is the fraction of each visual mesh's triangles kept, in (0, 1]; got {detail}")
    return detail


def decimatable_meshes(model) -> list[int]:
    """Ids of the meshes that only non-colliding, untextured geoms draw, large enough to decimate."""
    import mujoco

    ok = np.zeros(model.nmesh, bool)
    used_otherwise = np.zeros(model.nmesh, bool)
    for g in np.flatnonzero(model.geom_type == mujoco.mjtGeom.mjGEOM_MESH):
        mesh, mat = model.geom_dataid[g], model.geom_matid[g]
        textured = mat >= 0 and bool((model.mat_texid[mat] >= 0).any())
        if model.geom_contype[g] or model.geom_conaffinity[g] or textured:
            used_otherwise[mesh] = True
        else:
            ok[mesh] = True
    ok &= ~used_otherwise & (model.mesh_facenum > MIN_FACES)
    return [int(m) for m in np.flatnonzero(ok)]


def _decimate(vertices: np.ndarray, faces: np.ndarray, detail: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, per-vertex normals) of one mesh with ~``detail`` of its triangles."""
    import fast_simplification

    # weld first: meshes from OBJ files repeat a position once per corner that has its own normal or
    # texture coordinate, and unwelded triangles share no edge to collapse
    vertices, welded = np.unique(vertices.astype(np.float64), axis=0, return_inverse=True)
    faces = welded.reshape(-1)[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    vertices, faces = fast_simplification.simplify(vertices, faces, target_reduction=1.0 - detail)
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # length = 2 x area
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return vertices, faces, normals


@contextmanager
def meshes_at_detail(model, detail: float) -> Iterator[int]:
    """Within the block, the model's visual meshes keep ~``detail`` of their triangles; yields the
    triangles drawn in all decimated meshes. ``detail`` 1.0 changes nothing."""
    detail = check_detail(detail)
    meshes = decimatable_meshes(model) if detail < 1.0 else []
    saved = {name: getattr(model, name).copy() for name in _ARRAYS} if meshes else {}
    kept = 0
    try:
        for m in meshes:
            vert, nvert = model.mesh_vertadr[m], model.mesh_vertnum[m]
            face, nface, normal = model.mesh_faceadr[m], model.mesh_facenum[m], model.mesh_normaladr[m]
            vertices, faces, normals = _decimate(model.mesh_vert[vert:vert + nvert],
                                                 model.mesh_face[face:face + nface], detail)
            if len(vertices) > min(nvert, model.mesh_normalnum[m]) or len(faces) >= nface:
                continue  # nothing gained, or no room for the normals: draw this mesh as it is
            model.mesh_vert[vert:vert + len(vertices)] = vertices
            model.mesh_normal[normal:normal + len(vertices)] = normals
            model.mesh_face[face:face + len(faces)] = faces
            model.mesh_facenormal[face:face + len(faces)] = faces  # normal i belongs to vertex i
            model.mesh_facenum[m] = len(faces)
            model.mesh_texcoordadr[m] = -1  # untextured: its texture coordinates are unused
            kept += len(faces)
        yield kept
    finally:
        for name, values in saved.items():
            getattr(model, name)[:] = values
