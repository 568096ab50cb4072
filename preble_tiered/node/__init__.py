"""The node agent process: one per engine, the `preble.v1.Node` service in front of vLLM."""
