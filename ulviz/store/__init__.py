"""The store layer: everything ulviz keeps on disk in HDF5, the only package importing h5py.

runs (the run file: writing epochs while training, reading a run back, finding, labelling and
renaming runs), files (opening HDF5 files safely: locks, SWMR reads, a dead writer's flag),
protection (the protected images a run file stores), analyses (post-hoc SAL rows and the sharpness
atlas), caches (cached loss landscapes) and tables (a study's summary tables). It imports only the
core layer; the data layer beside it does not import it, and every layer from models up may.
"""
