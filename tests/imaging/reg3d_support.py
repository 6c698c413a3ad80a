"""Constants shared by the 3D imaging tests (a uniquely named module, not conftest,
so `import` cannot pick up another directory's conftest)."""

from __future__ import annotations

from sim.phantom import DEFAULT_ISO_MM

ISO = DEFAULT_ISO_MM
PIVOT = (0.0, 0.0, -150.0)
