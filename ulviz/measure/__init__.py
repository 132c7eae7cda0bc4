"""The measure layer: what the package measures of a trained network and its run. SAL (per-layer
sharpness-aware learnability: the search, its batched form, the reference loop, SAL of run files),
UD (the Unlearnable Distance) and its seed statistics, loss landscapes, optimization paths,
the linear probe, the sharpness atlas, layer surgery, the perturbations themselves, and runs
compared side by side.

It may import the core, data, store, models and protect layers (a run's training data comes from
protect.trainset); training and every layer above may import it.
"""
