"""The training layer: the training loop (loop: one run, appended to its run file epoch by epoch,
resumable, with SAL measured after every epoch) and its check (verify: does a run file reproduce
here, inputs and first epochs).

It sits above measure because training measures SAL as it goes; it may import every layer below
(core, data, store, models, protect, measure), and studies, app and cli may import it.

Named ``training``, not ``train``, so that the public function :func:`ulviz.train` hides no
sub-package: ``import ulviz.training.loop`` works like every other layer's modules.
"""
