"""Biomechanics: the OpenSim model (coordinates, markers, inverse kinematics, .trc/.mot files),
virtual markers on the body-model mesh, and scaling the model to a subject."""

from kinemesh.models.biomech.opensim_model import (
    Coordinate,
    IKResult,
    OsimModel,
    read_mot,
    write_mot,
    write_trc,
)
from kinemesh.models.biomech.virtual_markers import VirtualMarkerSet, study_markers

__all__ = ["Coordinate", "IKResult", "OsimModel", "VirtualMarkerSet", "read_mot", "study_markers", "write_mot",
           "write_trc"]
