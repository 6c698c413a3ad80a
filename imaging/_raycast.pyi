"""Types of the compiled DRR ray caster (imaging/_raycast.c)."""

import numpy as np

SKIP_BLOCK: int

def cast_rows(
    voxels: np.ndarray, strides_xyz: np.ndarray, shape_xyz: np.ndarray,
    room_to_index: np.ndarray, source: np.ndarray, pixel0: np.ndarray, step_u: np.ndarray,
    step_v: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray, skip_first: np.ndarray,
    skip_last: np.ndarray, row_first: int, row_step: int, out: np.ndarray, /,
) -> None: ...
