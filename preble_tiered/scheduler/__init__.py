"""Pure scheduling code: a Clock and dataclasses in, decisions out. No I/O, no wall time."""
