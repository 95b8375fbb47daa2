"""The feedback server and its labeling page (`feedback_server.py`, `static/`); it imports nothing from `framework`."""
