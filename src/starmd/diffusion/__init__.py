"""SE(3) diffusion of residue frames: R3 VP-SDE on translations, IGSO3 Brownian motion on rotations (FrameDiff)."""

from starmd.diffusion.r3 import R3Diffuser
from starmd.diffusion.se3 import SE3Diffuser
from starmd.diffusion.so3 import SO3Diffuser

__all__ = ["R3Diffuser", "SO3Diffuser", "SE3Diffuser"]
