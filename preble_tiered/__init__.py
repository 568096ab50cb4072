"""preble_tiered: a tier-aware (HBM / DRAM / disk) distributed prompt scheduler after Preble."""

__version__ = "0.1.0"
