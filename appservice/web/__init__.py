"""The web edge: the app factory and its routes, the JSON APIs, the pages, the security
middlewares, the OpenAPI document, templates and static files."""
