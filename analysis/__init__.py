"""Adapter Atlas: the library. Everything computed lives here; nothing here imports streamlit."""
__version__ = "0.1.0"
