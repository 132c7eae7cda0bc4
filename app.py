"""ulviz dashboard: the entry point (`make app` = `streamlit run app.py`), which names the pages.

The home page (home.py: runs, jobs, forms) is titled "Home" in the sidebar instead of the entry
file's name; every script in pages/ follows in the order and under the names Streamlit's pages/
convention gives them (pages/1_Loss_landscape.py: "Loss landscape" at /Loss_landscape), so a new
page is listed by adding its file."""
from pathlib import Path

import streamlit as st
from streamlit.source_util import page_sort_key

ROOT = Path(__file__).resolve().parent
PAGES = [st.Page(str(ROOT / "home.py"), title="Home", icon=":material/home:", default=True)] + [
    st.Page(str(p)) for p in sorted((ROOT / "pages").glob("*.py"), key=page_sort_key)]
st.navigation(PAGES).run()
