"""kinemesh: video of a person in, 3D body mesh and biomechanical kinematics out."""

__version__ = "0.1.0"
