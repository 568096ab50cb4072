"""The `preble` command: the user's process. It starts clusters, drives them and reads them;
it is the only package that imports the router, the node agent and the simulator together.

    main      the argument parser and the `sim | workload` commands
    serving   `serve | router | node | generate | bench`
    admin     `admin ...` (the Admin API, rendered)
    launcher  a router and N node agents as child processes on loopback (`serve`, tests)
    bench     replays a workload through a running router and reports the metrics
"""
