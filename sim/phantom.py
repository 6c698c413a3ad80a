"""A procedural thorax/upper-abdomen anatomy phantom, evaluated analytically.

The phantom lives in the planning frame (DICOM LPS patient coordinates, mm:
+x patient left, +y posterior, +z superior) and is a painter's list of soft
edged primitives (ellipsoids, elliptic cylinders, rib rings), each with a
Hounsfield value. Nothing is shipped as a binary file: `make_phantom(seed)`
builds it in microseconds and `Phantom.evaluate(points)` samples it anywhere.

Why analytic: the simulated CBCT samples the phantom at T^-1(q) for every
daily voxel q, so the daily image has no interpolation bias and the true
registration is known exactly. Edges are soft (a ~1 mm linear ramp on an
approximate signed distance) so point sampling does not alias, much like the
point spread function of a real scanner.

Why this anatomy: the registration must be unambiguous in all six degrees of
freedom, so the structures are deliberately asymmetric in x (heart, liver,
stomach on opposite sides), in y (spine posterior, sternum anterior) and in
z (vertebrae of unequal heights, tilted ribs only above the diaphragm, lung
domes, kidneys low).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

AIR_HU = -1000.0
EDGE_MM = 1.0  # width of the soft edge ramp

Kind = Literal["ellipsoid", "cylinder", "ring", "box"]


def _rot(axis: str, deg: float) -> np.ndarray:
    r = np.radians(deg)
    c, s = np.cos(r), np.sin(r)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass(frozen=True)
class Primitive:
    """One soft-edged solid. Local frame: u = R^T (p - centre).

    * ellipsoid: semi-axes (a, b, c).
    * cylinder: elliptic cross-section (a, b) in local xy, half-length c along local z
      (np.inf for an unbounded cylinder).
    * ring: a band of radial half-thickness `thickness` around the ellipse (a, b) in
      local xy, half-width c along local z, kept only where |u_x| >= gap (a rib pair
      with the sternal gap in front).
    * box: half-sides (a, b, c) along local x, y, z (the QA cube, sim/qa_phantom.py).
    """

    kind: Kind
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    hu: float
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    thickness: float = 0.0
    gap: float = 0.0

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.array(self.axes, dtype=float)
        if self.kind == "ring":
            half[:2] += self.thickness
        half = half + 2 * EDGE_MM
        with np.errstate(invalid="ignore"):
            ext = np.abs(self.rotation) @ half
        ext = np.where(np.isnan(ext), np.inf, ext)
        c = np.array(self.centre, dtype=float)
        return c - ext, c + ext

    def signed_distance(self, ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm (negative inside) at local coordinates u,
        first order near the edge (which is all the soft edge needs)."""
        a, b, c = self.axes
        if self.kind == "ellipsoid":
            return _ellipse_sd(ux, uy, a, b, uz, c)
        if self.kind == "cylinder":
            sd = _ellipse_sd(ux, uy, a, b)
            if np.isfinite(c):
                sd = np.maximum(sd, np.abs(uz) - np.float32(c))
            return sd
        if self.kind == "box":
            return _box_sd(ux, uy, uz, a, b, c)
        sd = np.abs(_ellipse_sd(ux, uy, a, b)) - np.float32(self.thickness)
        sd = np.maximum(sd, np.abs(uz) - np.float32(c))
        if self.gap > 0:
            sd = np.maximum(sd, np.float32(self.gap) - np.abs(ux))
        return sd


def _box_sd(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: float, b: float,
            c: float) -> np.ndarray:
    """Exact signed distance to a box of half-sides (a, b, c) centred on the origin."""
    qx = np.abs(x) - np.float32(a)
    qy = np.abs(y) - np.float32(b)
    qz = np.abs(z) - np.float32(c)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2 + np.maximum(qz, 0) ** 2)
    return outside + np.minimum(np.maximum(np.maximum(qx, qy), qz), 0)


def _ellipse_sd(
    x: np.ndarray, y: np.ndarray, a: float, b: float,
    z: np.ndarray | None = None, c: float = 1.0,
) -> np.ndarray:
    # s = normalised radius; distance ~ (s - 1) / |grad s| with grad s = (u / a^2) / s.
    q = (x / a) ** 2 + (y / b) ** 2
    g2 = (x / (a * a)) ** 2 + (y / (b * b)) ** 2
    if z is not None:
        q = q + (z / c) ** 2
        g2 = g2 + (z / (c * c)) ** 2
    s = np.sqrt(q)
    g = np.sqrt(g2)
    return (s - 1.0) * s / np.maximum(g, 1e-6)


@dataclass(frozen=True)
class Phantom:
    primitives: tuple[Primitive, ...]
    background_hu: float = AIR_HU
    name: str = "thorax"

    def evaluate(self, points_mm: np.ndarray) -> np.ndarray:
        """HU at each of the (N, 3) planning-frame points (float32, shape (N,)).

        Points are processed in contiguous chunks and a primitive is evaluated only on
        chunks its bounding box meets, so spatially coherent input (a grid in C order)
        is fast. For whole images prefer `evaluate_grid`, which is several times faster.
        """
        pts = np.asarray(points_mm, dtype=np.float32).reshape(-1, 3)
        cols = [np.ascontiguousarray(pts[:, i]) for i in range(3)]
        out = np.full(pts.shape[0], self.background_hu, dtype=np.float32)
        blo, bhi = self._boxes()
        chunk = 32768
        for start in range(0, pts.shape[0], chunk):
            x, y, z = (c[start:start + chunk] for c in cols)
            lo = np.array([x.min(), y.min(), z.min()])
            hi = np.array([x.max(), y.max(), z.max()])
            hits = np.flatnonzero(~((blo > hi).any(axis=1) | (bhi < lo).any(axis=1)))
            o = out[start:start + chunk]
            for k in hits:
                prim = self.primitives[k]
                rt = prim.rotation.T.astype(np.float32)
                c = np.asarray(prim.centre, dtype=np.float32)
                dx, dy, dz = x - c[0], y - c[1], z - c[2]
                u = [rt[i, 0] * dx + rt[i, 1] * dy + rt[i, 2] * dz for i in range(3)]
                _blend(o, prim, prim.signed_distance(*u))
        return out

    def evaluate_grid(self, size: tuple[int, int, int], index_to_point: np.ndarray) -> np.ndarray:
        """HU on a grid of `size` (x, y, z) voxels whose index (i, j, k) is at planning point
        `index_to_point @ (i, j, k, 1)`; returns a float32 array shaped (z, y, x).

        Each primitive is evaluated only on the index sub-block its bounding box maps
        to, as whole-array numpy operations (a 240x240x100 grid takes well under 1 s).
        """
        aff = np.asarray(index_to_point, dtype=float)
        inv = np.linalg.inv(aff)
        nx, ny, nz = (int(s) for s in size)
        out = np.full((nz, ny, nx), self.background_hu, dtype=np.float32)
        blo, bhi = self._boxes()
        for prim, lo, hi in zip(self.primitives, blo, bhi):
            corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
            corners = np.clip(corners, -1e7, 1e7)  # unbounded cylinders
            idx = inv[:3, :3] @ corners + inv[:3, 3:4]
            i0 = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
            i1 = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, (nx, ny, nz))
            if np.any(i1 <= i0):
                continue
            # local u = R^T (p - c) is affine in the index: u = u0 + G (i, j, k).
            rt = prim.rotation.T
            g = (rt @ aff[:3, :3]).astype(np.float32)
            u0 = (rt @ (aff[:3, 3] - np.asarray(prim.centre, dtype=float))).astype(np.float32)
            ii = np.arange(i0[0], i1[0], dtype=np.float32)
            jj = np.arange(i0[1], i1[1], dtype=np.float32)[:, None]
            kk = np.arange(i0[2], i1[2], dtype=np.float32)[:, None, None]
            u = [(u0[r] + g[r, 2] * kk) + (g[r, 1] * jj + g[r, 0] * ii) for r in range(3)]
            view = out[i0[2]:i1[2], i0[1]:i1[1], i0[0]:i1[0]]
            _blend(view, prim, prim.signed_distance(*u))
        return out

    def _boxes(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bbox() for p in self.primitives]
        return np.array([b[0] for b in boxes]), np.array([b[1] for b in boxes])


def _blend(out: np.ndarray, prim: Primitive, sd: np.ndarray) -> None:
    """Paint `prim` over `out` in place with a linear soft edge EDGE_MM wide."""
    alpha = np.clip(np.float32(0.5) - sd * np.float32(1.0 / EDGE_MM), 0.0, 1.0)
    out += alpha * (np.float32(prim.hu) - out)


class _Shapes:
    """The primitives of a phantom in painting order (later ones win)."""

    def __init__(self) -> None:
        self.items: list[Primitive] = []

    def ell(self, c, a, hu, rot=None):  # type: ignore[no-untyped-def]
        self.items.append(Primitive("ellipsoid", tuple(c), tuple(a), hu,
                                    np.eye(3) if rot is None else rot))

    def cyl(self, c, a, hu, rot=None):  # type: ignore[no-untyped-def]
        self.items.append(Primitive("cylinder", tuple(c), tuple(a), hu,
                                    np.eye(3) if rot is None else rot))


def make_phantom(seed: int = 7) -> Phantom:
    """A thorax / upper abdomen, centred on the planning frame origin.

    The seed only moves the small structures (lung vessels, bowel gas), so every
    seed is the same patient with different fine texture.
    """
    rng = np.random.default_rng(seed)
    shapes = _Shapes()
    P, ell, cyl = shapes.items, shapes.ell, shapes.cyl

    # Body: subcutaneous fat shell, muscle/soft tissue inside. Unbounded in z
    # (the patient goes on beyond the scan).
    cyl((0, 5, 0), (165, 105, np.inf), -90)
    cyl((0, 3, 0), (152, 93, np.inf), 40)
    # Liver (right = -x), below the right lung dome; kidneys low and posterior.
    ell((-55, 0, -60), (85, 70, 65), 60, _rot("z", 10))
    ell((-65, 62, -95), (25, 20, 48), 30, _rot("z", 25) @ _rot("x", 12))
    ell((68, 60, -85), (24, 19, 46), 30, _rot("z", -20) @ _rot("x", -10))
    # Stomach on the left with an anterior gas cap.
    ell((62, -35, -45), (45, 35, 40), 20, _rot("y", 15))
    ell((60, -58, -32), (26, 12, 16), -950)
    # Lungs: different sizes and heights, right dome lower than left.
    ell((-72, 12, 72), (55, 70, 98), -820, _rot("z", -6))
    ell((74, 12, 80), (50, 68, 90), -820, _rot("z", 8))
    # Lung vessels: small elongated soft-tissue density blobs, random per seed.
    for side in (-1, 1):
        for _ in range(14):
            c = (side * rng.uniform(45, 95), rng.uniform(-35, 55), rng.uniform(10, 140))
            a = (rng.uniform(3, 6), rng.uniform(3, 6), rng.uniform(8, 20))
            ell(c, a, -60, _rot("x", rng.uniform(-40, 40)) @ _rot("y", rng.uniform(-40, 40)))
    # Heart, left-anterior, tilted; descending aorta left of the spine.
    ell((22, -35, 38), (55, 45, 50), 45, _rot("z", 30) @ _rot("x", 20))
    cyl((18, 35, 0), (12, 12, np.inf), 55)
    # Sternum anterior, only in the chest.
    ell((0, -86, 45), (16, 8, 75), 450)
    # Spine: vertebral bodies of unequal heights (so z is not periodic), each a
    # cortical shell with trabecular core, a lamina/spinous process and two
    # transverse processes; discs are the gaps left as soft tissue.
    heights = [22, 26, 24, 27, 23, 25, 28, 24, 26, 23, 25]
    z = -140.0
    rib_levels: list[float] = []
    for h in heights:
        zc = z + h / 2
        cyl((0, 58, zc), (18, 16, h / 2), 700)
        cyl((0, 58, zc), (14.5, 12.5, h / 2 - 1.5), 230)
        ell((0, 100, zc - 6), (7, 17, 9), 600, _rot("x", 30))
        ell((-30, 74, zc + 2), (17, 6, 6), 600, _rot("z", 12))
        ell((31, 74, zc + 1), (17, 6, 6), 600, _rot("z", -12))
        rib_levels.append(zc)
        z += h + 6
    cyl((0, 84, 0), (8, 9, np.inf), 15)  # spinal canal
    # Ribs above the diaphragm: rings tilted so they run down anteriorly,
    # with the sternal gap in front. One at a time per vertebra level.
    for zc in rib_levels:
        if zc < -45:
            continue
        P.append(Primitive(
            "ring", (0, 8, zc + 4), (138, 88, 5.0), 650,
            _rot("x", 20), thickness=4.0, gap=22.0,
        ))
    # Bowel gas pockets low and anterior.
    for _ in range(7):
        c = (rng.uniform(-60, 80), rng.uniform(-70, -20), rng.uniform(-135, -95))
        ell(c, (rng.uniform(6, 14), rng.uniform(5, 10), rng.uniform(6, 12)), -900)
    # Target: a lesion in the liver (the default isocentre sits in it).
    ell((-25, 10, -15), (14, 12, 16), 95)
    return Phantom(tuple(P))


DEFAULT_ISO_MM: tuple[float, float, float] = (-25.0, 10.0, -15.0)


def make_pelvis_phantom(seed: int = 11) -> Phantom:
    """A male pelvis, centred on the planning frame origin; the target is the prostate
    (PELVIS_ISO_MM).

    A second, differently built anatomy for the registration bench: its strong
    structures run along the slice axis (femoral shafts, pubic rami, sacrum tilted in
    y-z), its soft tissue is nearly uniform around the target and it is close to
    left-right symmetric, so a method tuned on the thorax phantom is not tested only
    on the images it was tuned on. The seed moves only bowel and rectal gas.
    """
    rng = np.random.default_rng(seed)
    shapes = _Shapes()
    P, ell, cyl = shapes.items, shapes.ell, shapes.cyl

    # Body: fat shell and muscle; wider than deep, unbounded in z.
    cyl((0, 0, 0), (185, 120, np.inf), -100)
    cyl((0, -2, 0), (170, 106, np.inf), 45)
    # Gluteal fat pads posterior-lateral.
    for side in (-1, 1):
        ell((side * 70, 85, -20), (60, 28, 90), -90, _rot("z", side * 15))
    for side in (-1, 1):
        s = float(side)
        # Iliac wing: a tilted cortical plate with trabecular core, high and lateral.
        rot = _rot("z", s * 35) @ _rot("y", s * 20)
        ell((s * 105, 20, 95), (14, 62, 58), 650, rot)
        ell((s * 105, 20, 95), (8, 55, 50), 220, rot)
        # Acetabulum and femoral head (cortical shell, trabecular core), neck, shaft.
        ell((s * 88, 5, -20), (26, 26, 26), 620)
        ell((s * 88, 5, -20), (21, 21, 21), 240)
        cyl((s * 110, 10, -55), (14, 13, 38), 600, _rot("y", s * 40))
        cyl((s * 122, 14, -150), (15, 15, 80), 700, _rot("y", s * 6))
        cyl((s * 122, 14, -150), (9, 9, 82), 150, _rot("y", s * 6))
        # Greater trochanter, lateral and a little posterior.
        ell((s * 135, 18, -52), (16, 20, 22), 550)
        # Ischial tuberosity posterior-inferior; obturator ring as two rami.
        ell((s * 58, 45, -70), (15, 20, 24), 600, _rot("x", 20))
        cyl((s * 35, -35, -48), (7, 8, 34), 650, _rot("z", s * 60) @ _rot("x", 70))
        cyl((s * 45, 15, -75), (7, 8, 30), 650, _rot("y", s * 20) @ _rot("x", -25))
        # Obturator internus / levator: slightly denser muscle beside the prostate.
        ell((s * 40, 15, -40), (12, 30, 35), 60, _rot("z", s * 10))
    # Pubic symphysis anterior.
    ell((0, -62, -40), (20, 10, 20), 500, _rot("x", -20))
    # Sacrum and coccyx: posterior, tilted (runs posteriorly as it rises), segmented.
    for k, (zc, half_w) in enumerate([(110, 50), (85, 45), (62, 40), (42, 32), (25, 24)]):
        yc = 52 + 0.3 * zc - 2 * k
        ell((0, yc, zc), (half_w, 13, 11), 480, _rot("x", -25))
        ell((0, yc, zc), (half_w - 6, 8, 7), 200, _rot("x", -25))
    ell((0, 52, 2), (10, 7, 14), 400, _rot("x", -40))
    # Lumbar vertebra L5 at the top of the scan.
    cyl((0, 60, 140), (24, 18, 12), 650)
    cyl((0, 60, 140), (20, 14, 10), 220)
    # Bladder (above and anterior to the prostate), prostate, seminal vesicles, rectum.
    ell((0, -28, 20), (48, 38, 40), 8)
    ell((0, 0, -25), (21, 16, 18), 42)
    for side in (-1, 1):
        ell((side * 18, 18, 5), (16, 6, 10), 30, _rot("z", side * 30))
    cyl((0, 35, 0), (16, 14, 70), 35, _rot("x", -15))
    # Rectal gas and bowel gas pockets (the only structures the seed moves).
    ell((rng.uniform(-5, 5), 36, rng.uniform(-10, 20)), (7, 6, 14), -900, _rot("x", -15))
    for _ in range(8):
        c = (rng.uniform(-90, 90), rng.uniform(-80, -10), rng.uniform(60, 140))
        ell(c, (rng.uniform(8, 16), rng.uniform(6, 12), rng.uniform(6, 12)), -880)
    # Femoral vessels anterior to the femoral heads (contrast-free, soft tissue).
    for side in (-1, 1):
        cyl((side * 80, -45, 0), (7, 7, np.inf), 55)
    return Phantom(tuple(P), name="pelvis")


PELVIS_ISO_MM: tuple[float, float, float] = (0.0, 0.0, -25.0)
