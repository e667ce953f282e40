"""`llama serve`: an OpenAI-compatible HTTP server over continuous batching (app.py, scheduler.py, protocol.py)."""
