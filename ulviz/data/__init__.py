"""The data layer: datasets as in-memory tensors (read from bundled or local files, never
downloaded), the training recipes and augmentations, and the tasks a network learns from the
images (classify, rotation, segment).

It imports only the core layer (and the standard library, torch, numpy, scikit-learn for the
bundled digits); the store beside it does not import it, and every layer above may.
"""
