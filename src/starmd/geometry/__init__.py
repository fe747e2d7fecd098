"""Shared SE(3) geometry: the one home of rigid transforms, SO(3) maps and IGSO3 used by every stage."""

from starmd.geometry.rigid import Rigid
from starmd.geometry.so3 import (
    hat,
    quat_to_rotmat,
    random_rotation,
    rotmat_to_quat,
    rotvec_to_rotmat,
    rotmat_to_rotvec,
    vee,
)

__all__ = [
    "Rigid",
    "hat",
    "vee",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "rotvec_to_rotmat",
    "rotmat_to_rotvec",
    "random_rotation",
]
