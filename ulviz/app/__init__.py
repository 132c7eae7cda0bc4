"""The app layer: the library side of the Streamlit dashboard. ui (helpers the pages share; with
the pages, app.py and home.py outside the package, the only code importing streamlit), plots
(every figure, plotly), jobs (runs and sweeps launched from the dashboard as background
processes) and teaching (the teaching page's model with two weights, computed exactly).

It may import every layer up to studies; the cli layer may import it, and the facade re-exports
the teaching page's model.
"""
