"""The router process: one per cluster, the scheduler on a real clock in front of the nodes."""
