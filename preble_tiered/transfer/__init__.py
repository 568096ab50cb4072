"""Node <-> node KV block transfer (gRPC `preble.v1.Transfer`) and bandwidth metering.

    framing  - block checksums, splitting a block into pieces, reassembling them (pure)
    meter    - EWMA bandwidth per data path ("dram", "disk", "net:<peer>")
    service  - the sending side: streams a node's stored blocks under credit flow control
    puller   - the receiving side: pulls a chain of blocks and hands each verified block on
"""
