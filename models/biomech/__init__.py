"""Biomechanics: the OpenSim model (coordinates, markers, inverse kinematics, .trc/.mot files)."""

from kinemesh.models.biomech.opensim_model import (
    Coordinate,
    IKResult,
    OsimModel,
    read_mot,
    write_mot,
    write_trc,
)

__all__ = ["Coordinate", "IKResult", "OsimModel", "read_mot", "write_mot", "write_trc"]
