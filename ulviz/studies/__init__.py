"""The studies layer: grids of runs and what they add up to. The demo study (the bundled runs),
cross-task studies (method x task), defense studies (protection x defense), sweeps (many runs from
one TOML file, local processes or Ray tasks) and what the worker processes of sweeps and jobs
share (processes: a run's file-safe name, the worker's environment).

It may import every layer up to training; the app and cli layers may import it.
"""
