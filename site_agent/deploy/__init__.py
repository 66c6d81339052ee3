"""What runs at a hospital in a deployed federation (``clinfl site run``), with Flower.

- ``runner``: ``clinfl site run``, which starts the two below and keeps the SuperNode up;
- ``supernode``: Flower's SuperNode process, dialling the coordinator (TLS, node key);
- ``executor``: the loop in the site's process that takes each of the SuperNode's tasks;
- ``deployed_site``: the site that answers each call of the contract
  (:mod:`clinfl.transport.contract`), checking the run's bundle and the site's policy;
- ``client_app``: the ClientApp named in clinfl's bundle, which refuses to run.
"""
