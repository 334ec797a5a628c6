"""The prediction API's workings; `app.py` holds only the routes that call into here."""
