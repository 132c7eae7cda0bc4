"""The protect layer: what stands between the clean images and the network. The unlearnable
methods (poisons: one registry, a module per family), the trainer's defenses against them, and the
protected training set as a run's model saw it (trainset: protection, data defenses and task,
digest-checked against the run file).

It imports the core, data, store and models layers (the optimized methods train surrogates with
the models layer's steps); measure and every layer above may import it.
"""
