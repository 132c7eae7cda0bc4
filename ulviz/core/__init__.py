"""The core layer, the bottom of the package: errors, the run configuration, devices, provenance
(versions, digests of code and data) and the three readings of a run's accuracy.

Its modules import the standard library, torch and numpy only, and of ulviz nothing but each
other; every other layer may import them.
"""
