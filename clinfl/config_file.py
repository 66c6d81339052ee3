"""Reading a federation config file: kept so ``clinfl.config_file`` imports keep working.

The reader is :mod:`clinfl.config.file`; which fields are paths, :mod:`clinfl.config.site_fields`.
"""

from clinfl.config.file import load_run_config, run_config_from_mapping
from clinfl.config.run import SECTIONS
from clinfl.config.site_fields import PATH_FIELDS, named_path_fields

__all__ = [
    "PATH_FIELDS",
    "SECTIONS",
    "load_run_config",
    "named_path_fields",
    "run_config_from_mapping",
]
