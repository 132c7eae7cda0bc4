"""The train layer: the training loop (loop: one run, appended to its run file epoch by epoch,
resumable, with SAL measured after every epoch) and its check (verify: does a run file reproduce
here, inputs and first epochs).

It sits above measure because training measures SAL as it goes; it may import every layer below
(core, data, store, models, protect, measure), and studies, app and cli may import it.

Note: ``ulviz.train``, the attribute of the package ``ulviz``, is the public function
:func:`ulviz.train` (the facade re-exports it), which hides this sub-package's name there. Import
its modules by name: ``from ulviz.train.loop import resume`` or ``from ulviz.train import loop``,
not ``import ulviz.train.loop as loop`` (that walks the attributes and finds the function).
"""
