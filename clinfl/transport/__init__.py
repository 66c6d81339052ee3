"""How sites and the coordinator reach each other outside one process (Flower), and what travels.

``wire`` turns round messages into bytes without pickle; ``calls`` names the calls a coordinator
makes of a site; ``flower_app`` builds and checks the Flower App Bundle clinfl submits.
"""
