"""Using a trained model: the model folder, exporting it from a run, and its model card."""

from clinfl.model_io.bundle import ModelBundle, read_bundle, resolve_seed, write_bundle
from clinfl.model_io.export import export_run

__all__ = ["ModelBundle", "export_run", "read_bundle", "resolve_seed", "write_bundle"]
