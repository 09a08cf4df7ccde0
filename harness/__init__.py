"""Real peers for tests and the demo: a throwaway Synapse, Matrix users, free ports.

Not part of the installed package: it runs from a checkout (`pytest`, `make demo`).
"""
