"""A model from what the user passed (a Model or a checkpoint folder)."""

import os

from calign.model.model import Model


def load_model(model, name="model"):
    """`model` itself when it is a calign.Model, else the checkpoint folder it names."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return Model.from_pretrained(os.fspath(model))
    raise TypeError(f"{name} must be a calign.Model or a checkpoint folder, not "
                    f"{type(model).__name__}")
