"""Latency lookup tables: units, correction, file, table, sampling and validation.

One concept per module:

- `units`: a spec's units, their keys and their torch/ONNX modules;
- `correction`: the sum-to-network correction (numpy only);
- `store`: the table file (read, write, checksum);
- `table`: `LatencyTable` (cache, gauge, fill, predict, drift check);
- `calibration`: the search's online calibration on top of the table;
- `validate`: which networks to fit and check on, and the check.
"""

from netadapt.latency.calibration import OnlineCalibration
from netadapt.latency.correction import FORMS, LEFT_OUT_TOLERANCE, Correction, fit_correction_terms
from netadapt.latency.store import FORMAT, VERSION, default_table_path, table_filename, table_path
from netadapt.latency.table import DriftReport, LatencyTable
from netadapt.latency.units import (
    UNIT_KINDS,
    Unit,
    boundary_millions,
    network_key,
    unit_module,
    unit_onnx,
    units_of,
    weights_millions,
)
from netadapt.latency.validate import (
    calibration_specs,
    first_iteration_specs,
    random_subnetwork,
    summarize_validation,
    trajectory,
    trajectory_specs,
    validate,
)

__all__ = [
    "FORMAT",
    "FORMS",
    "LEFT_OUT_TOLERANCE",
    "UNIT_KINDS",
    "VERSION",
    "Correction",
    "DriftReport",
    "LatencyTable",
    "OnlineCalibration",
    "Unit",
    "boundary_millions",
    "default_table_path",
    "calibration_specs",
    "first_iteration_specs",
    "fit_correction_terms",
    "network_key",
    "random_subnetwork",
    "summarize_validation",
    "table_filename",
    "table_path",
    "trajectory",
    "trajectory_specs",
    "unit_module",
    "unit_onnx",
    "units_of",
    "validate",
    "weights_millions",
]
