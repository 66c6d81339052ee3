"""How sites and the coordinator reach each other outside one process, and what travels.

``contract`` is the table of calls a coordinator makes of a site (with the participant
interface derived from it); ``wire`` turns round messages into bytes without pickle; ``flower``
holds what both ends need from Flower (the app bundle, the message records, its processes).
"""
