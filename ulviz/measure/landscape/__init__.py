"""Loss landscapes: the loss and accuracy of a model along lines and planes in weight space.

A point of a plane is θ + α·d + β·e for the origin weights θ and two directions d, e (a line has
one). Directions are random with filter normalization (Li et al., NeurIPS 2018), layer
normalization or none; restricted to one weight tensor (the landscape that layer's SAL measures);
the straight line between two weight states; or given by the caller (the PCA directions of a
weight path, from :mod:`ulviz.measure.trajectory`). Biases and normalization-layer parameters (every
tensor of one dimension or less) are left out of random directions unless `keep_biasbn`.

The model is evaluated in eval mode: batch-norm statistics stay frozen at the origin's running
averages, so a grid shows the loss of the network as it would be used, not of a training step.

Why it is fast. Grid points differ only in their weights, so the work that does not depend on
them is done once: the unperturbed stages before the first perturbed one run once over the data,
and the first perturbed stage, if it is a Linear or Conv layer, is linear in its weights, so its
output at (α, β) is ``r0 + α·r_d + β·r_e`` with three responses computed once; the points of one
grid row share ``r0 + α·r_d``, so each adds one term. The remaining stages run for many grid
points at a time: as batched matrix products when only Linear layers and activations are left,
with ``torch.func.functional_call`` under ``vmap`` on a GPU, or in a loop over points on the CPU
(see :class:`_Evaluator`); the loss of a chunk of points is one call over all its batches. All
of it happens on a private copy of the model; the caller's model is never modified. A plane's
directions use seeds `seed` and `seed + 1`, so a line with the same seed runs along the plane's
first axis.

The modules: directions (random, difference), evaluation (:class:`~ulviz.measure.landscape.evaluation._Evaluator`),
surfaces (:func:`~ulviz.measure.landscape.surfaces.plane`, ``line``, ``interpolation``: the entry points) and
runs (landscapes of run files, cached as they are computed). Part of the measure layer: it
imports the layers below it, and SAL's stage reader and the paths' PCA plane beside it.
"""
