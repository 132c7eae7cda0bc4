"""The models layer: the architectures by name (registry: each adapts to the dataset's channels,
image size and classes, and splits into stages for the measures) and the shared train and eval
steps (steps: one optimiser step, one evaluation) that training, the poisons' surrogates and the
measures all use.

It may import the core, data and store layers (it uses core, and the data layer's recipes for a
step's augmentation); every layer from protect up may import it.
"""
