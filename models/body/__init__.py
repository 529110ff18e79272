"""Parametric body models behind one stateless interface (see `layer.BodyLayer`).

`load_body_model(path)` builds the default Anny-derived layer from its compact file
(`python -m kinemesh.models.body.anny_convert --out var/models/body` makes it once);
`create_smpl_layer(path, kind)` wraps operator-supplied SMPL / SMPL-X files.
"""

from kinemesh.models.body.assets import load_body_model, read_body_model, save_body_model
from kinemesh.models.body.layer import BodyLayer, BodyModelConfig, BodyOutput

__all__ = [
    "BodyLayer", "BodyModelConfig", "BodyOutput", "load_body_model", "read_body_model",
    "save_body_model",
]
