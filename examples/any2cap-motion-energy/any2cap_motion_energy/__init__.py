"""Motion energy, an example condition type for any2capins: how much the picture changes
between sampled frames, overall and on a grid, measured with numpy alone.

The entry point ``any2capins.conditions: motion_energy`` names
:class:`MotionEnergyConditionType`; importing this package wires the stage to it.
"""

from any2cap_motion_energy.annotator import MotionEnergyAnnotator, MotionEnergyConfig
from any2cap_motion_energy.condition import (
    LEVELS,
    NAME,
    MotionEnergyCondition,
    MotionEnergyConditionType,
)
from any2cap_motion_energy.measure import EnergyMeasurement, Levels, measure_motion_energy

# The condition type names its stage here, once both classes exist: the annotator's
# `writes` is derived from the condition type, so neither module can import the other first.
MotionEnergyConditionType.annotators = (MotionEnergyAnnotator,)

__all__ = [
    "LEVELS",
    "NAME",
    "EnergyMeasurement",
    "Levels",
    "MotionEnergyAnnotator",
    "MotionEnergyCondition",
    "MotionEnergyConditionType",
    "MotionEnergyConfig",
    "measure_motion_energy",
]
