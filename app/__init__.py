"""The ferlens Streamlit app (``streamlit run app/main.py``): compare hybrid variants side by side."""
