"""`GET /openapi.json` (btsguru.openapi as JSON) and `GET /docs` (Swagger UI over it).

The docs page is a static shell over the vendored Swagger UI in `static/swagger-ui/`
(no CDN, so it works offline and under a strict Content-Security-Policy).
"""

from __future__ import annotations

import tornado.web

from btsguru.handlers.base import JsonHandler
from btsguru.openapi import openapi_document

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>btsguru API docs</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" href="{icon}">
</head>
<body>
<noscript>This page needs JavaScript; the document itself is at
<a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="{bundle}"></script>
<script src="{init}"></script>
</body>
</html>
"""


class OpenApiHandler(JsonHandler):
    def get(self) -> None:
        origin = f"{self.request.protocol}://{self.request.host}"
        self.write_json(openapi_document(origin))


# Like the console: no other site may frame the page (clickjacking). Only the framing
# directive: Swagger UI's own styles and scripts are left to the browser's defaults.
DOCS_CSP = "frame-ancestors 'none'"


class DocsHandler(tornado.web.RequestHandler):
    def set_default_headers(self) -> None:
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", DOCS_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(DOCS_PAGE.format(
            css=self.static_url("swagger-ui/swagger-ui.css"),
            icon=self.static_url("swagger-ui/favicon-32x32.png"),
            bundle=self.static_url("swagger-ui/swagger-ui-bundle.js"),
            init=self.static_url("docs.js")))
