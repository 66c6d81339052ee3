"""What runs at the coordinator in a deployed federation (``clinfl coordinator start``).

- ``launcher``: ``clinfl coordinator start``: the plan, the SuperLink, the run, following it;
- ``superlink``: Flower's SuperLink process (TLS, registered node keys);
- ``server_app``: the ServerApp Flower runs for the run (in ``flwr-serverapp``), which calls
- ``deployment``: the run itself, the same rounds as in the in-process federation, with
- ``remote_sites``: each site reached through Flower, one generic call driven by the contract
  (:mod:`clinfl.transport.contract`).
"""
