"""What clinfl needs from Flower at both ends of a deployment.

``bundle`` builds the Flower App Bundle the coordinator submits and the check a site runs on it;
``records`` is how a call and its reply ride in a Flower message; ``processes`` starts and stops
Flower's own processes (the SuperLink at the coordinator, a SuperNode at each site). The code
that runs at each end is in ``coordinator/deploy/`` and ``site_agent/deploy/``.
"""
