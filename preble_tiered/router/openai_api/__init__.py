"""The router's OpenAI-compatible HTTP API (FastAPI on uvicorn, in the router's event loop)."""
